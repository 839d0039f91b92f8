//! The Envoy configuration users copy, `envoy/tollgate.yaml`, with its
//! placeholders filled: `cargo xtask up`, the benchmark's Tollgate arm and
//! the end-to-end tests all render it here, so what they run is what ships.

/// The values that fill `envoy/tollgate.yaml`'s placeholders.
#[derive(Debug, Clone)]
pub struct EnvoyValues {
    pub envoy_port: u16,
    pub envoy_admin_port: u16,
    pub upstream_port: u16,
    pub control_plane_port: u16,
    /// Absolute path of `filter.wasm`.
    pub filter_wasm: String,
    pub sync_token: String,
}

/// Fills every `{{placeholder}}`; refuses a template that would leave one unfilled.
pub fn render_envoy_config(template: &str, values: &EnvoyValues) -> Result<String, String> {
    if values.sync_token.contains(['\'', '"', '\\', '\n']) {
        return Err("the sync token must not contain quotes, backslashes or newlines".into());
    }
    let rendered = template
        .replace("{{envoy_port}}", &values.envoy_port.to_string())
        .replace("{{envoy_admin_port}}", &values.envoy_admin_port.to_string())
        .replace("{{upstream_port}}", &values.upstream_port.to_string())
        .replace(
            "{{control_plane_port}}",
            &values.control_plane_port.to_string(),
        )
        .replace("{{filter_wasm}}", &values.filter_wasm)
        .replace("{{sync_token}}", &values.sync_token);
    match rendered.find("{{") {
        Some(at) => {
            let rest = rendered.get(at..).unwrap_or_default();
            let name = rest.split("}}").next().unwrap_or(rest);
            Err(format!(
                "the Envoy template has an unknown placeholder {name}}}}}"
            ))
        }
        None => Ok(rendered),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> EnvoyValues {
        EnvoyValues {
            envoy_port: 10000,
            envoy_admin_port: 9901,
            upstream_port: 8000,
            control_plane_port: 8080,
            filter_wasm: "/x/filter.wasm".into(),
            sync_token: "tok".into(),
        }
    }

    #[test]
    fn the_shipped_template_renders_completely() {
        let template = include_str!("../../envoy/tollgate.yaml");
        let out = render_envoy_config(template, &values()).unwrap();
        assert!(!out.contains("{{"));
        assert!(out.contains("port_value: 10000"));
        assert!(out.contains("/x/filter.wasm"));
    }

    #[test]
    fn unknown_placeholders_and_unsafe_tokens_are_refused() {
        let err = render_envoy_config("a {{nope}} b", &values()).unwrap_err();
        assert!(err.contains("{{nope}}"), "{err}");
        let mut v = values();
        v.sync_token = "a'b".into();
        assert!(render_envoy_config("x", &v).is_err());
    }
}
