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
    /// How Envoy checks the control plane's certificate; `None` leaves out
    /// the template's TLS block (control plane on loopback, plain HTTP).
    pub control_plane_tls: Option<ControlPlaneTls>,
}

/// What Envoy trusts when it reaches the control plane over TLS.
#[derive(Debug, Clone)]
pub struct ControlPlaneTls {
    /// The DNS name the control plane's certificate is for (SNI and the
    /// name checked).
    pub name: String,
    /// Absolute path of the CA certificate (PEM) that signed it.
    pub ca_file: String,
}

const TLS_BEGIN: &str = "# tollgate-tls: begin";
const TLS_END: &str = "# tollgate-tls: end";

/// The template without its TLS block, marker lines included.
fn without_tls(template: &str) -> Result<String, String> {
    let mut kept = String::with_capacity(template.len());
    let mut inside = false;
    for line in template.split_inclusive('\n') {
        match line.trim() {
            TLS_BEGIN if !inside => inside = true,
            TLS_END if inside => inside = false,
            TLS_BEGIN | TLS_END => {
                return Err(format!(
                    "the Envoy template's `{TLS_BEGIN}` and `{TLS_END}` lines do not pair up"
                ))
            }
            _ if inside => {}
            _ => kept.push_str(line),
        }
    }
    if inside {
        return Err(format!(
            "the Envoy template's `{TLS_BEGIN}` has no `{TLS_END}`"
        ));
    }
    Ok(kept)
}

/// Fills every `{{placeholder}}`; refuses a template that would leave one unfilled.
pub fn render_envoy_config(template: &str, values: &EnvoyValues) -> Result<String, String> {
    if values.sync_token.contains(['\'', '"', '\\', '\n']) {
        return Err("the sync token must not contain quotes, backslashes or newlines".into());
    }
    let unsafe_text = |text: &str| text.contains(['\'', '"', '\\', '\n']);
    let (template, tls) = match &values.control_plane_tls {
        Some(tls) if unsafe_text(&tls.name) || unsafe_text(&tls.ca_file) => return Err(
            "the control plane's name and CA file must not contain quotes, backslashes or newlines"
                .into(),
        ),
        Some(tls) => (template.to_owned(), tls.clone()),
        // Nothing is left to fill these in.
        None => (
            without_tls(template)?,
            ControlPlaneTls {
                name: String::new(),
                ca_file: String::new(),
            },
        ),
    };
    let rendered = template
        .replace("{{envoy_port}}", &values.envoy_port.to_string())
        .replace("{{envoy_admin_port}}", &values.envoy_admin_port.to_string())
        .replace("{{upstream_port}}", &values.upstream_port.to_string())
        .replace(
            "{{control_plane_port}}",
            &values.control_plane_port.to_string(),
        )
        .replace("{{filter_wasm}}", &values.filter_wasm)
        .replace("{{sync_token}}", &values.sync_token)
        .replace("{{control_plane_name}}", &tls.name)
        .replace("{{control_plane_ca_file}}", &tls.ca_file);
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
            control_plane_tls: None,
        }
    }

    #[test]
    fn the_shipped_template_renders_completely() {
        let template = include_str!("../../envoy/tollgate.yaml");
        let out = render_envoy_config(template, &values()).unwrap();
        assert!(!out.contains("{{"));
        assert!(out.contains("port_value: 10000"));
        assert!(out.contains("/x/filter.wasm"));
        // Plain HTTP on loopback: no TLS block, no marker left behind.
        assert!(!out.contains("transport_socket"), "{out}");
        assert!(!out.lines().any(|l| l.trim().starts_with("# tollgate-tls:")));

        let mut v = values();
        v.control_plane_tls = Some(ControlPlaneTls {
            name: "tollgate.example.com".into(),
            ca_file: "/etc/tollgate/ca.pem".into(),
        });
        let out = render_envoy_config(template, &v).unwrap();
        assert!(!out.contains("{{"));
        assert!(out.contains("envoy.transport_sockets.tls"));
        assert!(out.contains(r#"sni: "tollgate.example.com""#));
        assert!(out.contains(r#"filename: "/etc/tollgate/ca.pem""#));
        assert!(out.contains(r#"exact: "tollgate.example.com""#));
    }

    #[test]
    fn a_tls_block_without_its_end_is_refused() {
        let err = render_envoy_config("a\n# tollgate-tls: begin\nb\n", &values()).unwrap_err();
        assert!(err.contains("no `# tollgate-tls: end`"), "{err}");
        let err = render_envoy_config("# tollgate-tls: end\n", &values()).unwrap_err();
        assert!(err.contains("do not pair up"), "{err}");
        let mut v = values();
        v.control_plane_tls = Some(ControlPlaneTls {
            name: "a\"b".into(),
            ca_file: "/ca.pem".into(),
        });
        assert!(render_envoy_config("x", &v).is_err());
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
