//! The Kubernetes manifests users copy (`envoy/istio/`, `envoy/envoy-gateway/`),
//! rendered with the manifest digest that `cargo xtask image` prints for the
//! filter's image: every document parses and has the kind and the fields that
//! matter, the WasmPlugin passes the CRD's rules, its `pluginConfig` is the
//! configuration contract the filter reads (and, as pilot writes it, what the
//! Istio-shaped end-to-end test loads), and the Envoy Gateway policy carries
//! the same image and configuration but for the name of a cluster its own
//! manifests create.
//!
//! `TOLLGATE_XTASK` (the xtask binary) and `TOLLGATE_FILTER_WASM` come from
//! `cargo xtask test`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{json, Value};
use tollgate_e2e::istio::{
    ecds_response, istio_plugin_config_json, placeholders, render_manifest, wasm_plugin,
    yaml_documents, EnvValueSource, FailStrategy, ManifestValues, Phase, PluginType,
    TrafficSelector, WasmPlugin, WorkloadMode, CONTROL_PLANE_CLUSTER,
};
use tollgate_e2e::{render_envoy_config, EnvoyValues};

/// One manifest file: its template, rendered text and documents.
struct Manifest {
    template: String,
    rendered: String,
    docs: Vec<Value>,
}

struct Rendered {
    values: ManifestValues,
    /// By path under `envoy/`, e.g. `istio/wasmplugin.yaml`.
    files: BTreeMap<String, Manifest>,
}

fn env_path(name: &str) -> PathBuf {
    let value = std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the end-to-end tests through `cargo xtask test`")
    });
    let path = PathBuf::from(value);
    assert!(path.exists(), "{name}={} does not exist", path.display());
    path
}

/// `cargo xtask image --wasm <filter.wasm>`: the last line of its stdout is
/// `sha256:<manifest digest>`.
fn built_image_digest() -> String {
    let out = tempfile::tempdir().expect("a temp dir");
    let output = Command::new(env_path("TOLLGATE_XTASK"))
        .arg("image")
        .arg("--wasm")
        .arg(env_path("TOLLGATE_FILTER_WASM"))
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("the xtask binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "xtask image failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default().trim();
    let digest = last
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("xtask image's last line is {last:?}, not sha256:<digest>"));
    assert!(
        digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
        "{last:?} is not a sha256 digest"
    );
    digest.to_owned()
}

fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy")
}

/// Every `.yaml` under envoy/istio and envoy/envoy-gateway, rendered once.
fn rendered() -> &'static Rendered {
    static RENDERED: OnceLock<Rendered> = OnceLock::new();
    RENDERED.get_or_init(|| {
        let values = ManifestValues::example(&built_image_digest());
        let mut files = BTreeMap::new();
        for dir in ["istio", "envoy-gateway"] {
            let entries = std::fs::read_dir(manifest_dir().join(dir)).expect("the manifest dir");
            for entry in entries {
                let path = entry.expect("a directory entry").path();
                if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                    continue;
                }
                let name = format!(
                    "{dir}/{}",
                    path.file_name()
                        .and_then(|n| n.to_str())
                        .expect("a UTF-8 name")
                );
                let template = std::fs::read_to_string(&path).expect("a manifest");
                let rendered = render_manifest(&template, &values)
                    .unwrap_or_else(|e| panic!("{name} does not render: {e}"));
                let docs = yaml_documents(&rendered)
                    .unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
                files.insert(
                    name,
                    Manifest {
                        template,
                        rendered,
                        docs,
                    },
                );
            }
        }
        Rendered { values, files }
    })
}

fn file(name: &str) -> &'static Manifest {
    rendered()
        .files
        .get(name)
        .unwrap_or_else(|| panic!("envoy/{name} is missing"))
}

/// The one document of `kind` (and name) in a file.
fn doc<'a>(manifest: &'a Manifest, kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = manifest
        .docs
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind} {name}");
    found[0]
}

fn at<'a>(value: &'a Value, pointer: &str) -> &'a Value {
    value
        .pointer(pointer)
        .unwrap_or_else(|| panic!("{pointer} is missing in {value:#}"))
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    at(value, pointer)
        .as_str()
        .unwrap_or_else(|| panic!("{pointer} is not a string in {value:#}"))
}

fn plugin() -> WasmPlugin {
    wasm_plugin(&file("istio/wasmplugin.yaml").rendered).expect("a valid WasmPlugin")
}

/// The filter's configuration contract: a JSON object, unknown fields errors,
/// `sync` required with a cluster and exactly one of token / token_env.
fn check_contract(config: &Value) -> Result<(), String> {
    fn fields<'a>(
        value: &'a Value,
        what: &str,
        known: &[&str],
    ) -> Result<&'a serde_json::Map<String, Value>, String> {
        let map = value
            .as_object()
            .ok_or_else(|| format!("{what} is not an object"))?;
        match map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(unknown) => Err(format!("{what} has an unknown field {unknown:?}")),
            None => Ok(map),
        }
    }
    fn text(value: Option<&Value>, what: &str) -> Result<Option<String>, String> {
        match value {
            None => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
            Some(other) => Err(format!("{what} is {other}, not a non-empty string")),
        }
    }
    let top = fields(config, "the configuration", &["sync", "api_key"])?;
    let sync = fields(
        top.get("sync").ok_or("sync is required")?,
        "sync",
        &[
            "cluster",
            "authority",
            "token",
            "token_env",
            "wait_ms",
            "retry_ms",
        ],
    )?;
    text(sync.get("cluster"), "sync.cluster")?.ok_or("sync.cluster is required")?;
    text(sync.get("authority"), "sync.authority")?;
    match (
        text(sync.get("token"), "sync.token")?,
        text(sync.get("token_env"), "sync.token_env")?,
    ) {
        (Some(_), None) | (None, Some(_)) => {}
        _ => return Err("sync needs exactly one of token and token_env".into()),
    }
    for key in ["wait_ms", "retry_ms"] {
        if let Some(ms) = sync.get(key) {
            if !ms.as_u64().is_some_and(|ms| (1..=60_000).contains(&ms)) {
                return Err(format!("sync.{key} is {ms}, not 1..=60000"));
            }
        }
    }
    if let Some(api_key) = top.get("api_key") {
        let api_key = fields(
            api_key,
            "api_key",
            &["headers", "bearer", "query", "cookie"],
        )?;
        if let Some(headers) = api_key.get("headers") {
            let headers = headers.as_array().ok_or("api_key.headers is not a list")?;
            for header in headers {
                text(Some(header), "an api_key header")?;
            }
        }
        if api_key.get("bearer").is_some_and(|b| !b.is_boolean()) {
            return Err("api_key.bearer is not a boolean".into());
        }
        text(api_key.get("query"), "api_key.query")?;
        text(api_key.get("cookie"), "api_key.cookie")?;
    }
    Ok(())
}

#[test]
fn every_manifest_renders_with_the_built_image_digest_and_every_document_parses() {
    let rendered = rendered();
    let expected: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::from([
        (
            "istio/wasmplugin.yaml",
            vec![("extensions.istio.io/v1alpha1", "WasmPlugin")],
        ),
        ("istio/sync-token.yaml", vec![("v1", "Secret")]),
        ("istio/stats-tags.yaml", vec![("v1", "ConfigMap")]),
        ("istio/istio-proxy-env.patch.yaml", vec![]),
        (
            "istio/control-plane.yaml",
            vec![
                ("v1", "Namespace"),
                ("v1", "Secret"),
                ("v1", "PersistentVolumeClaim"),
                ("apps/v1", "Deployment"),
                ("v1", "Service"),
            ],
        ),
        (
            "istio/control-plane-postgres.yaml",
            vec![
                ("v1", "Namespace"),
                ("v1", "Secret"),
                ("apps/v1", "Deployment"),
                ("v1", "Service"),
            ],
        ),
        (
            "istio/control-plane-tls.yaml",
            vec![
                ("v1", "Secret"),
                ("networking.istio.io/v1", "DestinationRule"),
            ],
        ),
        (
            "istio/external-control-plane.yaml",
            vec![
                ("networking.istio.io/v1", "ServiceEntry"),
                ("networking.istio.io/v1", "DestinationRule"),
            ],
        ),
        (
            "envoy-gateway/extension-policy.yaml",
            vec![("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy")],
        ),
        (
            "envoy-gateway/control-plane-route.yaml",
            vec![
                ("gateway.networking.k8s.io/v1", "HTTPRoute"),
                ("gateway.envoyproxy.io/v1alpha1", "SecurityPolicy"),
                ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"),
                ("gateway.networking.k8s.io/v1", "BackendTLSPolicy"),
            ],
        ),
        (
            "envoy-gateway/envoy-proxy.yaml",
            vec![
                ("gateway.envoyproxy.io/v1alpha1", "EnvoyProxy"),
                ("v1", "Secret"),
            ],
        ),
        ("envoy-gateway/gateway-infrastructure.patch.yaml", vec![]),
    ]);
    let names: BTreeSet<&str> = rendered.files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        expected.keys().copied().collect(),
        "the manifest files"
    );

    for (name, manifest) in &rendered.files {
        // The header says what each placeholder is, as envoy/tollgate.yaml's does.
        let (comments, body): (Vec<&str>, Vec<&str>) = manifest
            .template
            .lines()
            .partition(|line| line.trim_start().starts_with('#'));
        let explained = placeholders(&comments.join("\n"));
        for used in placeholders(&body.join("\n")) {
            assert!(
                explained.contains(&used),
                "{name} uses {{{{{used}}}}} without saying what it is"
            );
        }
        assert!(
            !manifest.rendered.contains("{{"),
            "{name} renders completely"
        );
        assert!(!manifest.docs.is_empty(), "{name} has documents");

        if name.ends_with(".patch.yaml") {
            // A patch is a partial object, one document, no kind.
            assert_eq!(manifest.docs.len(), 1, "{name}");
            assert!(manifest.docs[0].get("kind").is_none(), "{name}");
            continue;
        }
        let kinds: Vec<(&str, &str)> = manifest
            .docs
            .iter()
            .map(|d| (str_at(d, "/apiVersion"), str_at(d, "/kind")))
            .collect();
        assert_eq!(kinds, expected[name.as_str()], "{name}");
        for d in &manifest.docs {
            str_at(d, "/metadata/name");
            if d["kind"] != "Namespace" {
                str_at(d, "/metadata/namespace");
            }
        }
    }
    // The digest went where the image is named.
    let digest = &rendered.values.filter_digest;
    assert!(file("istio/wasmplugin.yaml")
        .rendered
        .contains(digest.as_str()));
    assert!(file("envoy-gateway/extension-policy.yaml")
        .rendered
        .contains(digest.as_str()));
}

#[test]
fn the_wasmplugin_is_a_sidecar_authn_filter_pinned_to_the_image() {
    let values = &rendered().values;
    let plugin = plugin();
    assert_eq!(plugin.namespace, values.app_namespace);
    assert_eq!(plugin.name, "tollgate");
    assert_eq!(
        plugin.selector,
        BTreeMap::from([("app".to_owned(), values.app.clone())])
    );
    assert_eq!(plugin.url, format!("oci://{}", values.filter_image));
    assert_eq!(
        plugin.sha256.as_deref(),
        Some(values.filter_digest.as_str())
    );
    assert_eq!(plugin.phase, Phase::Authn);
    assert_eq!(plugin.fail_strategy, FailStrategy::FailReload);
    assert_eq!(
        plugin.matches,
        [TrafficSelector {
            mode: WorkloadMode::Server,
            ports: vec![]
        }]
    );
    assert!(matches!(
        plugin.plugin_type,
        PluginType::Unspecified | PluginType::Http
    ));
    // Nothing secret inline: the token comes from the proxy's environment.
    assert!(plugin
        .vm_env
        .iter()
        .all(|e| e.value_from == EnvValueSource::Host && e.value.is_none()));
    assert!(!file("istio/wasmplugin.yaml")
        .rendered
        .contains(&values.sync_token));
}

#[test]
fn the_plugin_configuration_is_the_contract_the_filter_reads() {
    let plugin = plugin();
    let config = &plugin.plugin_config;
    check_contract(config).unwrap_or_else(|e| panic!("{e}: {config:#}"));
    assert_eq!(config["sync"]["cluster"], CONTROL_PLANE_CLUSTER);
    let token_env = str_at(config, "/sync/token_env");
    assert!(
        plugin
            .vm_env
            .iter()
            .any(|e| e.name == token_env && e.value_from == EnvValueSource::Host),
        "sync.token_env {token_env} is not passed to the VM by vmConfig.env"
    );

    // The cluster is Istio's name for the Service control-plane.yaml creates.
    let service = doc(
        file("istio/control-plane.yaml"),
        "Service",
        "tollgate-control-plane",
    );
    assert_eq!(
        CONTROL_PLANE_CLUSTER,
        format!(
            "outbound|{}||{}.{}.svc.cluster.local",
            at(service, "/spec/ports/0/port"),
            str_at(service, "/metadata/name"),
            str_at(service, "/metadata/namespace")
        )
    );

    // What pilot writes is compact JSON of the same value, and what the ECDS
    // resource (the end-to-end test's input) carries.
    let json = istio_plugin_config_json(config);
    assert!(!json.contains([' ', '\n']), "{json}");
    assert_eq!(&serde_json::from_str::<Value>(&json).expect("JSON"), config);
    assert!(json.contains("\"wait_ms\":20000"), "{json}");
    let ecds: Value = serde_json::from_str(&ecds_response(
        &plugin,
        Path::new("/etc/istio/filter.wasm"),
        None,
    ))
    .expect("the ECDS response is JSON");
    assert_eq!(
        ecds["resources"][0]["typed_config"]["config"]["configuration"]["value"],
        json
    );
}

#[test]
fn the_sync_token_reaches_the_istio_proxy_environment_from_a_secret() {
    let plugin = plugin();
    let token_env = str_at(&plugin.plugin_config, "/sync/token_env").to_owned();

    let patch = &file("istio/istio-proxy-env.patch.yaml").docs[0];
    let containers = at(patch, "/spec/template/spec/containers")
        .as_array()
        .expect("a container list");
    assert_eq!(containers.len(), 1);
    let proxy = &containers[0];
    assert_eq!(proxy["name"], "istio-proxy");
    assert_eq!(proxy["image"], "auto");
    assert_eq!(at(proxy, "/env/0/name"), &json!(token_env));
    let secret_name = str_at(proxy, "/env/0/valueFrom/secretKeyRef/name");
    let secret_key = str_at(proxy, "/env/0/valueFrom/secretKeyRef/key");

    let secret = doc(file("istio/sync-token.yaml"), "Secret", secret_name);
    assert_eq!(
        str_at(secret, "/metadata/namespace"),
        plugin.namespace,
        "a pod reads Secrets of its own namespace only"
    );
    let token = str_at(secret, &format!("/stringData/{secret_key}"));
    for control_plane in [
        "istio/control-plane.yaml",
        "istio/control-plane-postgres.yaml",
    ] {
        let secret = doc(file(control_plane), "Secret", "tollgate-control-plane");
        assert_eq!(
            str_at(secret, "/stringData/sync-token"),
            token,
            "{control_plane}"
        );
    }
}

fn control_plane_container(manifest: &Manifest) -> (&Value, &Value) {
    let deployment = doc(manifest, "Deployment", "tollgate-control-plane");
    (
        deployment,
        at(deployment, "/spec/template/spec/containers/0"),
    )
}

/// `name -> secretKeyRef key` (or literal value) of a container's env.
fn env_of(container: &Value) -> BTreeMap<String, String> {
    at(container, "/env")
        .as_array()
        .expect("an env list")
        .iter()
        .map(|e| {
            let value = match (e.get("value"), e.pointer("/valueFrom/fieldRef/fieldPath")) {
                (Some(v), _) => v.as_str().expect("a string value").to_owned(),
                (None, Some(field)) => format!("field:{}", field.as_str().expect("a field path")),
                (None, None) => format!("secret:{}", str_at(e, "/valueFrom/secretKeyRef/key")),
            };
            (str_at(e, "/name").to_owned(), value)
        })
        .collect()
}

#[test]
fn the_control_plane_runs_as_one_sqlite_writer_or_several_postgres_replicas() {
    for (name, replicas) in [
        ("istio/control-plane.yaml", 1),
        ("istio/control-plane-postgres.yaml", 2),
    ] {
        let manifest = file(name);
        let (deployment, container) = control_plane_container(manifest);
        assert_eq!(at(deployment, "/spec/replicas"), &json!(replicas), "{name}");
        assert_eq!(
            str_at(container, "/image"),
            rendered().values.control_plane_image
        );
        let pod = at(deployment, "/spec/template/spec");
        assert_eq!(at(pod, "/securityContext/runAsUser"), &json!(65532));
        assert_eq!(at(pod, "/securityContext/runAsNonRoot"), &json!(true));
        assert_eq!(
            at(container, "/securityContext/readOnlyRootFilesystem"),
            &json!(true)
        );
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(
                at(container, &format!("/{probe}/httpGet")),
                &json!({"path": "/healthz", "port": "https", "scheme": "HTTPS"}),
                "{name}"
            );
        }
        assert_eq!(
            at(container, "/ports/0"),
            &json!({"name": "https", "containerPort": 8080})
        );

        // Every secret key the container reads is in the Secret.
        let secret = doc(manifest, "Secret", "tollgate-control-plane");
        let env = env_of(container);
        for (var, value) in &env {
            if let Some(key) = value.strip_prefix("secret:") {
                assert!(
                    secret["stringData"].get(key).is_some(),
                    "{name}: {var} reads {key}, which the Secret lacks"
                );
            }
        }
        assert_eq!(env["CONTROL_PLANE_ADDR"], "0.0.0.0:8080", "{name}");
        assert!(env.contains_key("CONTROL_PLANE_ADMIN_TOKEN"), "{name}");
        assert!(env.contains_key("CONTROL_PLANE_SYNC_TOKEN"), "{name}");
        // Webhook signing secrets are sealed at rest, with a key from the Secret.
        assert_eq!(
            env["CONTROL_PLANE_SECRETS_KEY"], "secret:secrets-key",
            "{name}"
        );
        // HTTPS only, from the certificate Secret, mounted where the
        // variables point.
        let (tls_dir, secret_name) = tls_mount(deployment, container);
        assert_eq!(secret_name, CONTROL_PLANE_TLS_SECRET, "{name}");
        assert_eq!(
            env["CONTROL_PLANE_TLS_CERT_FILE"],
            format!("{tls_dir}/tls.crt"),
            "{name}"
        );
        assert_eq!(
            env["CONTROL_PLANE_TLS_KEY_FILE"],
            format!("{tls_dir}/tls.key"),
            "{name}"
        );

        // The Service selects these pods on the port named https.
        let service = doc(manifest, "Service", "tollgate-control-plane");
        assert_eq!(
            at(service, "/spec/selector"),
            at(deployment, "/spec/selector/matchLabels")
        );
        assert_eq!(
            at(service, "/spec/ports/0"),
            &json!({"name": "https", "appProtocol": "https", "port": 8080, "targetPort": "https"})
        );
    }

    let sqlite = file("istio/control-plane.yaml");
    let (deployment, container) = control_plane_container(sqlite);
    assert_eq!(str_at(deployment, "/spec/strategy/type"), "Recreate");
    assert_eq!(env_of(container)["CONTROL_PLANE_DATA_DIR"], "/data");
    assert!(at(container, "/volumeMounts")
        .as_array()
        .expect("mounts")
        .iter()
        .any(|m| m["mountPath"] == "/data" && m["name"] == "data"));
    let volume = at(deployment, "/spec/template/spec/volumes")
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "data")
        .expect("a volume named data");
    let claim = str_at(volume, "/persistentVolumeClaim/claimName");
    doc(sqlite, "PersistentVolumeClaim", claim);

    let postgres = file("istio/control-plane-postgres.yaml");
    let (_, container) = control_plane_container(postgres);
    let env = env_of(container);
    assert_eq!(env["CONTROL_PLANE_DATABASE_URL"], "secret:database-url");
    // The replica that allocates shares is reached at its pod's address.
    assert_eq!(env["POD_IP"], "field:status.podIP");
    // Over HTTPS too, each replica's certificate checked for the Service's
    // name (no certificate names a pod's address) against the same CA.
    assert_eq!(env["CONTROL_PLANE_ADVERTISE_URL"], "https://$(POD_IP):8080");
    let (deployment, container) = control_plane_container(postgres);
    let (tls_dir, _) = tls_mount(deployment, container);
    assert_eq!(
        env["CONTROL_PLANE_TLS_PEER_CA_FILE"],
        format!("{tls_dir}/ca.crt")
    );
    assert_eq!(env["CONTROL_PLANE_TLS_PEER_NAME"], CONTROL_PLANE_TLS_NAME);
    let secret = doc(postgres, "Secret", "tollgate-control-plane");
    assert_eq!(
        str_at(secret, "/stringData/database-url"),
        rendered().values.database_url
    );
}

/// The Secret the control plane serves HTTPS from, and the name its
/// certificate is for.
const CONTROL_PLANE_TLS_SECRET: &str = "tollgate-control-plane-tls";
const CONTROL_PLANE_TLS_NAME: &str = "tollgate-control-plane.tollgate.svc";

/// Where the container mounts its certificate Secret, and that Secret's name.
fn tls_mount<'a>(deployment: &'a Value, container: &'a Value) -> (&'a str, &'a str) {
    let mount = at(container, "/volumeMounts")
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["name"] == "tls")
        .expect("a mount named tls");
    assert_eq!(mount["readOnly"], true);
    let volume = at(deployment, "/spec/template/spec/volumes")
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "tls")
        .expect("a volume named tls");
    (
        str_at(mount, "/mountPath"),
        str_at(volume, "/secret/secretName"),
    )
}

#[test]
fn sidecars_reach_the_control_plane_over_tls_checking_its_name_and_ca() {
    let values = &rendered().values;
    let manifest = file("istio/control-plane-tls.yaml");
    let service = doc(
        file("istio/control-plane.yaml"),
        "Service",
        "tollgate-control-plane",
    );
    let rule = doc(manifest, "DestinationRule", "tollgate-control-plane");
    // The workload's namespace, for its own sidecars: where Istio lets a
    // sidecar read a credentialName Secret.
    assert_eq!(str_at(rule, "/metadata/namespace"), values.app_namespace);
    assert_eq!(
        at(rule, "/spec/workloadSelector/matchLabels"),
        &json!({"app": values.app})
    );
    // The host and port of the cluster the filter calls.
    let port = &service["spec"]["ports"][0]["port"];
    assert_eq!(
        CONTROL_PLANE_CLUSTER,
        format!("outbound|{port}||{}", str_at(rule, "/spec/host"))
    );
    let setting = at(rule, "/spec/trafficPolicy/portLevelSettings/0");
    assert_eq!(&setting["port"]["number"], port);
    let tls = &setting["tls"];
    assert_eq!(tls["mode"], "SIMPLE");
    assert_eq!(tls["sni"], CONTROL_PLANE_TLS_NAME);
    assert_eq!(tls["subjectAltNames"], json!([CONTROL_PLANE_TLS_NAME]));
    let secret = doc(manifest, "Secret", str_at(tls, "/credentialName"));
    assert_eq!(str_at(secret, "/metadata/namespace"), values.app_namespace);
    assert_eq!(
        str_at(secret, "/data/ca.crt"),
        values.control_plane_ca_base64
    );
}

#[test]
fn an_external_control_plane_gets_a_cluster_that_originates_tls() {
    let manifest = file("istio/external-control-plane.yaml");
    let host = &rendered().values.control_plane_host;
    let entry = doc(manifest, "ServiceEntry", "tollgate-control-plane");
    assert_eq!(at(entry, "/spec/hosts"), &json!([host]));
    assert_eq!(str_at(entry, "/spec/location"), "MESH_EXTERNAL");
    assert_eq!(str_at(entry, "/spec/resolution"), "DNS");
    let port = at(entry, "/spec/ports/0");
    assert_eq!(
        port["protocol"], "HTTP",
        "the filter's calls are plain HTTP"
    );
    assert_eq!(port["targetPort"], 443);

    let rule = doc(manifest, "DestinationRule", "tollgate-control-plane");
    assert_eq!(str_at(rule, "/spec/host"), host);
    let setting = at(rule, "/spec/trafficPolicy/portLevelSettings/0");
    assert_eq!(setting["port"]["number"], port["number"]);
    assert_eq!(setting["tls"]["mode"], "SIMPLE");
    assert_eq!(setting["tls"]["sni"], json!(host));
    // Without it Istio takes a certificate for any name the roots signed.
    assert_eq!(setting["tls"]["subjectAltNames"], json!([host]));

    // The cluster to put in sync.cluster, as the header says.
    let cluster = format!("outbound|{}||{host}", port["number"]);
    assert!(
        manifest
            .rendered
            .contains(&format!("cluster: \"{cluster}\"")),
        "the header names {cluster}"
    );
    assert!(manifest
        .rendered
        .contains(&format!("authority: \"{host}\"")));
}

#[test]
fn the_envoy_gateway_policy_loads_the_same_image_and_configuration_through_a_cluster_its_manifests_create(
) {
    let values = &rendered().values;
    let plugin = plugin();
    let policy = doc(
        file("envoy-gateway/extension-policy.yaml"),
        "EnvoyExtensionPolicy",
        "tollgate",
    );
    assert_eq!(
        str_at(policy, "/metadata/namespace"),
        values.gateway_namespace
    );
    assert_eq!(
        at(policy, "/spec/targetRefs"),
        &json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": values.gateway_name}])
    );
    let wasm = at(policy, "/spec/wasm").as_array().expect("a wasm list");
    assert_eq!(wasm.len(), 1);
    let wasm = &wasm[0];
    assert_eq!(
        at(wasm, "/code"),
        &json!({"type": "Image", "image": {"url": values.filter_image, "sha256": values.filter_digest}})
    );
    assert_eq!(wasm["failOpen"], false);

    // The configuration is the WasmPlugin's but for the cluster's name.
    let config = at(wasm, "/config");
    check_contract(config).unwrap_or_else(|e| panic!("{e}: {config:#}"));
    let cluster = str_at(config, "/sync/cluster");
    let mut same = config.clone();
    same["sync"]["cluster"] = json!(CONTROL_PLANE_CLUSTER);
    assert_eq!(same, plugin.plugin_config);
    let token_env = str_at(config, "/sync/token_env");
    assert_eq!(at(wasm, "/env/hostKeys"), &json!([token_env]));

    // Envoy Gateway names rule 0 of the HTTPRoute this way; the route sends
    // it to the control-plane Service and takes no traffic of its own.
    let routes = file("envoy-gateway/control-plane-route.yaml");
    let route = doc(routes, "HTTPRoute", "tollgate-control-plane");
    assert_eq!(
        cluster,
        format!(
            "httproute/{}/{}/rule/0",
            str_at(route, "/metadata/namespace"),
            str_at(route, "/metadata/name")
        )
    );
    assert_eq!(
        str_at(route, "/metadata/namespace"),
        values.gateway_namespace
    );
    assert_eq!(
        str_at(route, "/spec/parentRefs/0/name"),
        values.gateway_name
    );
    let service = doc(
        file("istio/control-plane.yaml"),
        "Service",
        "tollgate-control-plane",
    );
    assert_eq!(
        at(route, "/spec/rules/0/backendRefs"),
        &json!([{
            "name": service["metadata"]["name"],
            "namespace": service["metadata"]["namespace"],
            "port": service["spec"]["ports"][0]["port"],
        }])
    );
    assert!(
        !at(route, "/spec/rules/0/matches/0/headers")
            .as_array()
            .expect("header matches")
            .is_empty(),
        "the route must not match the Gateway's ordinary requests"
    );
    let security = doc(routes, "SecurityPolicy", "tollgate-control-plane");
    assert_eq!(
        at(security, "/spec/targetRefs"),
        &json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "tollgate-control-plane"}])
    );
    assert_eq!(
        str_at(security, "/spec/authorization/defaultAction"),
        "Deny"
    );
    // The route's cluster speaks TLS to the Service's port, checking the
    // control plane's name against the CA in the Secret it serves from.
    let backend_tls = doc(routes, "BackendTLSPolicy", "tollgate-control-plane");
    assert_eq!(
        str_at(backend_tls, "/metadata/namespace"),
        str_at(service, "/metadata/namespace")
    );
    assert_eq!(
        at(backend_tls, "/spec/targetRefs"),
        &json!([{
            "group": "",
            "kind": "Service",
            "name": service["metadata"]["name"],
            "sectionName": service["spec"]["ports"][0]["name"],
        }])
    );
    assert_eq!(
        at(backend_tls, "/spec/validation"),
        &json!({
            "caCertificateRefs": [{"group": "", "kind": "Secret", "name": CONTROL_PLANE_TLS_SECRET}],
            "hostname": CONTROL_PLANE_TLS_NAME,
        })
    );
    let grant = doc(routes, "ReferenceGrant", "tollgate-control-plane");
    assert_eq!(str_at(grant, "/metadata/namespace"), "tollgate");
    assert_eq!(
        at(grant, "/spec/from"),
        &json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": values.gateway_namespace}])
    );
    assert_eq!(
        at(grant, "/spec/to"),
        &json!([{"group": "", "kind": "Service", "name": "tollgate-control-plane"}])
    );

    // The token: from a Secret where Envoy Gateway runs the Envoys, into the
    // Envoy container's environment, which the Gateway is pointed at.
    let proxies = file("envoy-gateway/envoy-proxy.yaml");
    let proxy = doc(proxies, "EnvoyProxy", "tollgate");
    assert_eq!(
        str_at(proxy, "/metadata/namespace"),
        values.gateway_namespace
    );
    let env = at(
        proxy,
        "/spec/provider/kubernetes/envoyDeployment/container/env/0",
    );
    assert_eq!(env["name"], token_env);
    let secret = doc(
        proxies,
        "Secret",
        str_at(env, "/valueFrom/secretKeyRef/name"),
    );
    assert_eq!(
        str_at(secret, "/metadata/namespace"),
        "envoy-gateway-system"
    );
    assert_eq!(
        str_at(
            secret,
            &format!("/stringData/{}", str_at(env, "/valueFrom/secretKeyRef/key"))
        ),
        values.sync_token
    );
    let patch = &file("envoy-gateway/gateway-infrastructure.patch.yaml").docs[0];
    assert_eq!(
        at(patch, "/spec/infrastructure/parametersRef"),
        &json!({"group": "gateway.envoyproxy.io", "kind": "EnvoyProxy", "name": "tollgate"})
    );
}

#[test]
fn the_optional_stats_tag_rule_is_the_one_envoy_tollgate_yaml_has() {
    let config_map = doc(
        file("istio/stats-tags.yaml"),
        "ConfigMap",
        "tollgate-stats-tags",
    );
    let bootstrap: Value = serde_json::from_str(str_at(config_map, "/data/custom_bootstrap.json"))
        .expect("custom_bootstrap.json is JSON");
    let template =
        std::fs::read_to_string(manifest_dir().join("tollgate.yaml")).expect("envoy/tollgate.yaml");
    let envoy = render_envoy_config(
        &template,
        &EnvoyValues {
            envoy_port: 1,
            envoy_admin_port: 2,
            upstream_port: 3,
            control_plane_port: 4,
            filter_wasm: "/filter.wasm".into(),
            sync_token: "token".into(),
            control_plane_tls: None,
        },
    )
    .expect("envoy/tollgate.yaml renders");
    let envoy = &yaml_documents(&envoy).expect("envoy/tollgate.yaml parses")[0];
    assert_eq!(
        at(&bootstrap, "/stats_config/stats_tags"),
        at(envoy, "/stats_config/stats_tags")
    );
}
