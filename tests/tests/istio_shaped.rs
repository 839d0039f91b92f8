//! Tollgate as Istio runs it: one HTTP filter delivered over ECDS from the
//! `WasmPlugin` users copy (`envoy/istio/wasmplugin.yaml`), no bootstrap
//! extension, the empty `vm_id`, Istio's cluster names, the configuration as
//! a `StringValue` of pilot's JSON, the module pulled by tag from a
//! loopback `docker-registry` into which `cargo xtask image --push` put it,
//! and the control plane reached over TLS as `control-plane-tls.yaml`'s
//! DestinationRule has it (SNI, the name checked, the CA as an SDS secret).
//!
//! Envoy runs with 2 workers, so three root contexts (two workers and the
//! main thread) contend for the lead. The tests check what a mesh user
//! relies on: exact limits and exact usage across workers, one long-poll
//! per Envoy, revocation within a second, the last config kept when the
//! control plane goes away, a neighbouring plugin left alone, and the lead
//! handed over, with every request counted once, when the leader's root
//! context is replaced by a live update or its VM crashes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tollgate_e2e::harness::{
    env_path, eventually, free_port, unique_name, xtask_image, Reply, Stack, SYNC_TOKEN,
};
use tollgate_e2e::istio::{
    ecds_resource_name, ecds_response, render_manifest, sidecar_bootstrap, sidecar_tls,
    wasm_plugin, write_atomically, FailurePolicy, ManifestValues, SidecarTls, SidecarValues,
    WasmPlugin,
};
use tollgate_e2e::registry::{pull_wasm, Registry};

/// Generous bound for "within 1 s" on a loaded 2-core machine.
const BOUND: Duration = Duration::from_secs(5);
/// Reports go out every second; the lead may change hands meanwhile.
const REPORT_BOUND: Duration = Duration::from_secs(15);

/// The WasmPlugin users copy, rendered for `image` with `digest` (hex).
fn the_shipped_wasm_plugin(image: &str, digest: &str) -> WasmPlugin {
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy/istio/wasmplugin.yaml"),
    )
    .expect("envoy/istio/wasmplugin.yaml");
    let values = ManifestValues {
        filter_image: image.to_owned(),
        ..ManifestValues::example(digest)
    };
    let rendered = render_manifest(&template, &values).expect("the manifest renders");
    wasm_plugin(&rendered).expect("the manifest is a WasmPlugin")
}

/// What pilot would make of `envoy/istio/control-plane-tls.yaml`, rendered
/// with the CA of the stack's control plane: the sidecar reaches it over
/// TLS, checking its name and that CA.
fn the_shipped_control_plane_tls(stack: &Stack) -> SidecarTls {
    use base64::Engine;
    let certificate = stack
        .tls
        .as_ref()
        .expect("the control plane serves HTTPS, as the manifests have it");
    let template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy/istio/control-plane-tls.yaml"),
    )
    .expect("envoy/istio/control-plane-tls.yaml");
    let values = ManifestValues {
        control_plane_ca_base64: base64::engine::general_purpose::STANDARD
            .encode(certificate.ca.pem()),
        ..ManifestValues::example(&"0".repeat(64))
    };
    let rendered = render_manifest(&template, &values).expect("the manifest renders");
    sidecar_tls(&rendered, stack.dir.path()).expect("the DestinationRule's TLS")
}

/// An Istio-shaped Envoy for `plugin` with the module at `wasm`, and the
/// ECDS file it watches.
struct Sidecar {
    name: String,
    ecds: PathBuf,
    admin_port: u16,
    port: u16,
}

impl Sidecar {
    async fn start(
        stack: &mut Stack,
        plugin: &WasmPlugin,
        wasm: &Path,
        policy: FailurePolicy,
        extra_filters: Vec<String>,
    ) -> Self {
        let name = unique_name("istio-envoy");
        let ecds = stack.dir.path().join(format!("{name}-ecds.yaml"));
        write_atomically(&ecds, &ecds_response(plugin, wasm, Some(policy))).expect("ECDS file");
        let sidecar = Self {
            name,
            ecds,
            admin_port: free_port(),
            port: free_port(),
        };
        let bootstrap = sidecar_bootstrap(&SidecarValues {
            admin_port: sidecar.admin_port,
            listener_port: sidecar.port,
            upstream_port: stack.upstream_port,
            control_plane_port: stack.control_plane_port,
            ecds_path: sidecar.ecds.clone(),
            filter_name: ecds_resource_name(plugin),
            extra_filters,
            control_plane_tls: Some(the_shipped_control_plane_tls(stack)),
        });
        let path = stack.dir.path().join(format!("{}.yaml", sidecar.name));
        std::fs::write(&path, bootstrap).expect("bootstrap file");
        // The WasmPlugin's vmConfig.env reads the token from the proxy's
        // environment (valueFrom: HOST).
        stack
            .add_envoy(
                &sidecar.name,
                &path,
                sidecar.admin_port,
                &[("TOLLGATE_SYNC_TOKEN", SYNC_TOKEN)],
            )
            .await;
        sidecar
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A request on a new connection, so both workers take requests.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(BOUND)
            .build()
            .expect("a client");
        let mut request = client.get(self.url(path));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        Reply::read(request.send().await.expect("Envoy answers")).await
    }

    async fn with_key(&self, key: &str) -> Reply {
        self.get("/anything", &[("x-api-key", key)]).await
    }

    async fn until_status(&self, key: &str, status: u16) -> Duration {
        eventually(BOUND, &format!("status {status} for a key"), || async {
            (self.with_key(key).await.status.as_u16() == status).then_some(())
        })
        .await
        .1
    }

    /// Replaces the ECDS resource: a live update, as istiod would push.
    fn update(&self, plugin: &WasmPlugin, wasm: &Path, policy: FailurePolicy) {
        write_atomically(&self.ecds, &ecds_response(plugin, wasm, Some(policy)))
            .expect("ECDS update");
    }

    async fn stat(&self, stack: &Stack, name: &str) -> u64 {
        let url = format!("http://127.0.0.1:{}/stats?filter=^{name}$", self.admin_port);
        let text = stack
            .client
            .get(url)
            .send()
            .await
            .expect("Envoy admin answers")
            .text()
            .await
            .expect("stats");
        text.lines()
            .filter_map(|l| l.split_once(": "))
            .filter(|(n, _)| *n == name)
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum()
    }
}

/// Pushes `wasm` with `cargo xtask image --push` to `registry` and pulls it
/// back by tag as Istio's agent would, checked by digest; writes the module
/// where the agent would and returns the rendered WasmPlugin and that file.
async fn push_and_pull(stack: &Stack, registry: &Registry, wasm: &Path) -> (WasmPlugin, PathBuf) {
    let tag = unique_name("e2e");
    let image = format!("{}/tollgate/filter:{tag}", registry.addr);
    let digest = xtask_image(&[
        "--wasm".as_ref(),
        wasm.as_os_str(),
        "--out".as_ref(),
        stack.dir.path().join(format!("oci-{tag}")).as_os_str(),
        "--push".as_ref(),
        image.as_ref(),
    ]);
    let hex = digest.strip_prefix("sha256:").expect("a digest").to_owned();
    let plugin = the_shipped_wasm_plugin(&image, &hex);
    assert_eq!(plugin.url, format!("oci://{image}"));
    assert_eq!(plugin.sha256.as_deref(), Some(hex.as_str()));
    let pulled = pull_wasm(&registry.addr, "tollgate/filter", &tag, &digest)
        .await
        .unwrap_or_else(|e| panic!("pull by tag: {e}"));
    assert_eq!(
        pulled,
        std::fs::read(wasm).expect("the module"),
        "the pulled module is the one pushed, byte for byte"
    );
    let file = stack.dir.path().join(format!("{tag}-plugin.wasm"));
    std::fs::write(&file, pulled).expect("the agent's local copy");
    (plugin, file)
}

/// The neighbouring plugin, inline with the empty `vm_id`, before Tollgate.
fn neighbour_filter() -> String {
    format!(
        r#"name: neighbour
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
  config:
    name: default.neighbour
    vm_config:
      runtime: envoy.wasm.runtime.v8
      code: {{ local: {{ filename: "{}" }} }}"#,
        env_path("TOLLGATE_NEIGHBOUR_WASM").display()
    )
}

/// A tenant on a plan with one `limit` and a key: (tenant id, key id, key).
async fn key_on_plan(stack: &Stack, limit: serde_json::Value) -> (String, String, String) {
    let tenant_id = stack.tenant_on_plan(limit).await;
    let (key_id, key) = stack.new_key(&tenant_id).await;
    (tenant_id, key_id, key)
}

/// Sends `n` keyed requests at once, each on its own connection; returns
/// how many got 200 (the others must be 429 `rate_limited`).
async fn burst(sidecar: &Sidecar, key: &str, n: usize) -> u64 {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (url, key) = (sidecar.url("/anything"), key.to_owned());
        set.spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(BOUND)
                .build()
                .expect("a client");
            let response = client.get(url).header("x-api-key", key).send().await;
            Reply::read(response.expect("Envoy answers")).await
        });
    }
    let mut allowed = 0;
    for r in set.join_all().await {
        match r.status.as_u16() {
            200 => allowed += 1,
            429 => assert_eq!(r.body["code"], "rate_limited", "{:?}", r.body),
            other => panic!("unexpected {other}: {:?}", r.body),
        }
    }
    allowed
}

/// The control plane's open long-polls, sampled over `for_how_long`: the
/// most seen at once.
async fn most_polls_open(stack: &Stack, for_how_long: Duration) -> f64 {
    let started = Instant::now();
    let mut most: f64 = 0.0;
    while started.elapsed() < for_how_long {
        most = most.max(
            stack
                .control_plane_metric("tollgate_control_plane_sync_polls_open")
                .await,
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_istio_shaped_envoy_runs_the_pulled_filter_exactly_and_leaves_its_neighbour_alone() {
    let registry = Registry::start().await;
    let mut stack = Stack::start_without_envoy_with_tls().await;
    let (plugin, module) =
        push_and_pull(&stack, &registry, &env_path("TOLLGATE_FILTER_WASM")).await;
    assert!(
        plugin
            .vm_env
            .iter()
            .any(|e| e.name == "TOLLGATE_SYNC_TOKEN"),
        "the token comes from the proxy's environment"
    );
    let sidecar = Sidecar::start(
        &mut stack,
        &plugin,
        &module,
        FailurePolicy::FailClosed,
        vec![neighbour_filter()],
    )
    .await;

    // 200 with the IETF headers; the neighbour ran first and counted it.
    let (_, key_id, key) = key_on_plan(
        &stack,
        json!({"name": "per-hour", "max": 1, "window_seconds": 3600, "burst": 10}),
    )
    .await;
    let took = sidecar.until_status(&key, 200).await;
    eprintln!("new key usable through the Istio-shaped Envoy after {took:?}");
    let ok = sidecar.with_key(&key).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    // q = the burst, w = its refill time from empty (10 × 3600 ÷ 1 s), so
    // r (8 of 10 left) never exceeds q.
    assert_eq!(
        ok.header("ratelimit-policy"),
        Some("\"per-hour\";q=10;w=36000")
    );
    assert_eq!(ok.header("ratelimit"), Some("\"per-hour\";r=8;t=7200"));
    assert_eq!(ok.header("x-ratelimit-limit"), Some("10"));
    assert_eq!(ok.header("x-ratelimit-remaining"), Some("8"));
    assert!(ok.body["headers"]["x-api-key"].is_null());
    assert!(ok.body["headers"]["x-api-key-id"].is_string());
    let neighbour_before: u64 = ok
        .header("x-neighbour-requests")
        .and_then(|n| n.parse().ok())
        .expect("the neighbour answers its count");

    // Exactly the burst across both workers: 2 taken, 8 left of 10.
    let allowed = burst(&sidecar, &key, 30).await;
    assert_eq!(allowed, 8);
    let after = sidecar.with_key(&key).await;
    assert_eq!(after.status, StatusCode::TOO_MANY_REQUESTS);
    let neighbour_after: u64 = after
        .header("x-neighbour-requests")
        .and_then(|n| n.parse().ok())
        .expect("the neighbour still counts");
    assert_eq!(
        neighbour_after,
        neighbour_before + 31,
        "the neighbour's own shared data stayed whole"
    );
    // Every item the neighbour put in its queue reaches its own root
    // context, none Tollgate's: what it drained catches up with what it
    // counted (this request's own item too, when its tick came first: it
    // drains every 100 ms, and a loaded machine can take that long).
    eventually(BOUND, "the neighbour draining its own queue", || async {
        let r = sidecar.get("/", &[]).await;
        let number = |name: &str| r.header(name).and_then(|n| n.parse::<u64>().ok());
        let (counted, drained) = (
            number("x-neighbour-requests")?,
            number("x-neighbour-drained")?,
        );
        assert!(drained <= counted, "drained {drained} of {counted}");
        (drained + 1 >= counted).then_some(())
    })
    .await;

    // Usage counted exactly: 2 + 8 admitted, every one once.
    stack.until_used(&key_id, 10, REPORT_BOUND).await;

    // One long-poll per Envoy at the control plane, never two, including
    // while the lead moves to the root context that serves no requests.
    let most = most_polls_open(&stack, Duration::from_secs(3)).await;
    assert_eq!(most, 1.0, "open long-polls for one Envoy");

    // Deactivation within a second.
    let started = Instant::now();
    stack.deactivate(&key_id).await;
    sidecar.until_status(&key, 401).await;
    eprintln!("deactivation enforced after {:?}", started.elapsed());
    let (_, _, live_key) = key_on_plan(
        &stack,
        json!({"name": "per-hour", "max": 100, "window_seconds": 3600}),
    )
    .await;
    sidecar.until_status(&live_key, 200).await;

    // The control plane gone: the last config stays in force.
    stack.stop_control_plane();
    for _ in 0..4 {
        assert_eq!(sidecar.with_key(&live_key).await.status, StatusCode::OK);
        let refused = sidecar.with_key(&key).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert_eq!(refused.body["code"], "disabled_api_key");
    }
    let log = stack.log(&sidecar.name);
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lead_moves_on_when_its_root_context_is_replaced_or_its_vm_crashes_and_counts_stay_exact(
) {
    let registry = Registry::start().await;
    let mut stack = Stack::start_without_envoy_with_tls().await;
    let (mut plugin, module) = push_and_pull(
        &stack,
        &registry,
        &env_path("TOLLGATE_FILTER_CRASH_TEST_WASM"),
    )
    .await;
    // Any root id works: pilot sets the WasmPlugin's pluginName there.
    plugin.plugin_name = Some("any-plugin-name".into());
    let sidecar = Sidecar::start(
        &mut stack,
        &plugin,
        &module,
        FailurePolicy::FailReload,
        Vec::new(),
    )
    .await;
    let (tenant_id, key_id, key) = key_on_plan(
        &stack,
        json!({"name": "per-hour", "max": 1000, "window_seconds": 3600}),
    )
    .await;
    sidecar.until_status(&key, 200).await;
    for _ in 0..9 {
        assert_eq!(sidecar.with_key(&key).await.status, StatusCode::OK);
    }
    // What the test saw admitted, which the control plane must report.
    let mut admitted = 10;
    stack.until_used(&key_id, admitted, REPORT_BOUND).await;

    // A live update that changes only the configuration: the VMs stay, the
    // root contexts (the leader's among them) are replaced.
    let filter = ecds_resource_name(&plugin);
    let updates = format!("extension_config_discovery.http_filter.{filter}.config_reload");
    let failures = format!("extension_config_discovery.http_filter.{filter}.config_fail");

    // A configuration the filter refuses (an unknown field): Envoy keeps the
    // one in force, and so does Tollgate.
    let mut bad = plugin.clone();
    bad.plugin_config["sync"]["wait"] = json!(1);
    sidecar.update(&bad, &module, FailurePolicy::FailReload);
    eventually(BOUND, "the bad configuration refused", || async {
        (sidecar.stat(&stack, &failures).await > 0).then_some(())
    })
    .await;
    let log = stack.log(&sidecar.name);
    assert!(log.contains("plugin configuration refused"), "{log}");
    assert!(log.contains("config update rejected"), "{log}");
    assert_eq!(sidecar.with_key(&key).await.status, StatusCode::OK);
    admitted += 1;
    let before = sidecar.stat(&stack, &updates).await;

    plugin.plugin_config["sync"]["wait_ms"] = json!(15000);
    sidecar.update(&plugin, &module, FailurePolicy::FailReload);
    eventually(BOUND, "the configuration update applied", || async {
        (sidecar.stat(&stack, &updates).await > before).then_some(())
    })
    .await;
    // Sync carries on: a key made now works, and every request counts once.
    let (fresh_id, fresh) = stack.new_key(&tenant_id).await;
    sidecar.until_status(&fresh, 200).await;
    for _ in 0..10 {
        assert_eq!(sidecar.with_key(&key).await.status, StatusCode::OK);
    }
    admitted += 10;
    stack.until_used(&key_id, admitted, REPORT_BOUND).await;
    stack.until_used(&fresh_id, 1, REPORT_BOUND).await;

    // The leader's VM crashes, twice (the lead lands elsewhere each time):
    // FAIL_RELOAD reloads a crashed worker VM, and the lease lapses to
    // another root context.
    for crash in 1..=2 {
        let armed = sidecar
            .get("/", &[("x-tollgate-crash-test", "leader")])
            .await;
        assert_eq!(armed.status.as_u16(), 204, "{:?}", armed.body);
        eventually(BOUND, "the leader's VM aborting", || async {
            (stack
                .log(&sidecar.name)
                .matches("crash test: leader aborting")
                .count()
                >= crash)
                .then_some(())
        })
        .await;
        let (new_id, new_key) = stack.new_key(&tenant_id).await;
        let took = eventually(REPORT_BOUND, "a key made after the crash", || async {
            let r = sidecar.with_key(&new_key).await;
            (r.status == StatusCode::OK).then_some(())
        })
        .await
        .1;
        eprintln!("crash {crash}: sync back after {took:?}");
        // A request a reloading VM cannot take is not Tollgate's to count.
        for _ in 0..10 {
            if sidecar.with_key(&key).await.status == StatusCode::OK {
                admitted += 1;
            }
        }
        stack.until_used(&key_id, admitted, REPORT_BOUND).await;
        stack.until_used(&new_id, 1, REPORT_BOUND).await;
    }
    // The lead changed hands at each event: given up by the replaced root
    // context at once, lapsed to another root context after each crash.
    let log = stack.log(&sidecar.name);
    assert!(log.contains("leader stopping, lease given up"), "{log}");
    assert!(log.matches("leads this Envoy").count() >= 4, "{log}");
}
