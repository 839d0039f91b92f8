//! How the leader names its Envoy to the control plane's proxy registry:
//! headers on every sync poll and usage report, so the control plane knows
//! which proxies run what and which config version each has applied, and
//! can tell a write that waits for propagation when it has arrived.
//!
//! The instance id is drawn once per Envoy process and kept in shared data
//! ([`INSTANCE_KEY`]), not in a VM, so a change of leader (a replaced root
//! context, a worker handing over to the main thread) keeps it: the registry
//! sees one proxy, not one per leader. A restarted Envoy starts with empty
//! shared data and is a new instance.
//!
//! The worker count is not sent: Envoy exposes its `--concurrency` to Wasm
//! through no attribute, and the root contexts this filter counts
//! (`tg3/roots`) include replaced ones, so any figure would be a guess.

use tollgate_core::layout::{applied_version, INSTANCE_KEY};

use crate::host::Host;

pub const INSTANCE_HEADER: &str = "tollgate-proxy-instance";
pub const NODE_HEADER: &str = "tollgate-proxy-node";
pub const CLUSTER_HEADER: &str = "tollgate-proxy-cluster";
pub const BUILD_HEADER: &str = "tollgate-proxy-build";
pub const APPLIED_HEADER: &str = "tollgate-proxy-applied-version";

/// A write token no present entry has: "create only" in Envoy's terms.
const CREATE_ONLY: u32 = u32::MAX;
/// Attempts at drawing the instance id against another root context.
const DRAW_ATTEMPTS: usize = 4;
/// Longest value sent: node ids are names, and the control plane keeps 256.
const MAX_VALUE: usize = 256;

/// The filter's build: crate version and the commit `cargo xtask build`
/// passed in (`unknown` in any other build).
pub fn build() -> String {
    let commit = option_env!("TOLLGATE_BUILD_COMMIT").unwrap_or("unknown");
    format!("{}+{commit}", env!("CARGO_PKG_VERSION"))
}

/// This Envoy's instance id, drawn by whichever root context asks first.
pub fn instance_id(host: &impl Host, now: u64) -> Option<String> {
    for _ in 0..DRAW_ATTEMPTS {
        if let Some((bytes, _)) = host.get(INSTANCE_KEY) {
            return String::from_utf8(bytes).ok();
        }
        let id = format!("{now:x}-{:016x}", host.random());
        // Of two root contexts drawing at once one writes; the other reads
        // the winner's id on its next attempt.
        if host
            .set(INSTANCE_KEY, Some(id.as_bytes()), Some(CREATE_ONLY))
            .is_ok()
        {
            return Some(id);
        }
    }
    None
}

/// Printable ASCII only, so Envoy takes it as a header value.
fn header_value(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(MAX_VALUE)
        .collect()
}

/// The identity headers of a call to the control plane made at `now`.
pub fn headers(host: &impl Host, now: u64) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(5);
    let Some(instance) = instance_id(host, now) else {
        // Without an instance id the control plane ignores the rest.
        return out;
    };
    out.push((INSTANCE_HEADER, header_value(&instance)));
    for (name, field) in [(NODE_HEADER, "id"), (CLUSTER_HEADER, "cluster")] {
        // Wasm's own `node` attribute first, then the generic `xds.node`.
        let value = host
            .property(&["node", field])
            .filter(|v| !v.is_empty())
            .or_else(|| host.property(&["xds", "node", field]));
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            out.push((name, header_value(&value)));
        }
    }
    out.push((BUILD_HEADER, build()));
    if let Some(version) = applied_version(host) {
        out.push((APPLIED_HEADER, version.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{config, FakeHost, QUEUE};
    use crate::host::Answer;
    use crate::report::Reporter;
    use crate::sync::SyncLoop;
    use tollgate_core::wire::SyncResponse;

    const T0: u64 = 1_700_000_000_000;

    fn envoy() -> FakeHost {
        let host = FakeHost::new();
        let mut properties = host.properties.borrow_mut();
        properties.insert("node.id".into(), "gateway-7".into());
        // A control character would make Envoy refuse the header: dropped.
        properties.insert("node.cluster".into(), "edge\n".into());
        drop(properties);
        host
    }

    #[test]
    fn polls_and_reports_name_the_envoy_and_the_version_it_applied() {
        let host = envoy();
        let c = config();
        let mut sync = SyncLoop::default();
        sync.on_tick(&host, &c, T0);
        let first = host.take_sent().remove(0);
        let instance = FakeHost::header(&first, INSTANCE_HEADER)
            .unwrap()
            .to_owned();
        assert_eq!(instance, "18bcfe56800-00000000feedbeef");
        assert_eq!(FakeHost::header(&first, NODE_HEADER), Some("gateway-7"));
        assert_eq!(FakeHost::header(&first, CLUSTER_HEADER), Some("edge"));
        assert!(FakeHost::header(&first, BUILD_HEADER)
            .is_some_and(|b| b.starts_with(concat!(env!("CARGO_PKG_VERSION"), "+"))));
        // Nothing applied yet: no version claimed.
        assert_eq!(FakeHost::header(&first, APPLIED_HEADER), None);
        let v4 = SyncResponse {
            version: 4,
            ..SyncResponse::default()
        };
        let answer = Answer {
            status: Some(200),
            body: serde_json::to_vec(&v4).unwrap(),
        };
        sync.on_answer(&host, &c, first.token, &answer, T0 + 5);
        // The next poll, sent at once, acknowledges version 4.
        let next = host.take_sent().remove(0);
        assert_eq!(FakeHost::header(&next, APPLIED_HEADER), Some("4"));
        assert_eq!(
            FakeHost::header(&next, INSTANCE_HEADER),
            Some(instance.as_str())
        );
        // The usage report carries the same identity.
        let mut reporter = Reporter::default();
        reporter.on_tick(&host, &c, QUEUE, T0 + 10);
        let report = host.take_sent().remove(0);
        assert_eq!(report.path, "/v1/usage");
        assert_eq!(
            FakeHost::header(&report, INSTANCE_HEADER),
            Some(instance.as_str())
        );
        assert_eq!(FakeHost::header(&report, APPLIED_HEADER), Some("4"));
    }

    #[test]
    fn the_instance_id_outlives_the_leader_that_drew_it() {
        let host = envoy();
        let drawn = instance_id(&host, T0).unwrap();
        // Another root context, later, finds the same id in shared data.
        assert_eq!(instance_id(&host, T0 + 60_000), Some(drawn));
    }

    #[test]
    fn an_envoy_without_a_node_id_sends_the_rest() {
        let host = FakeHost::new();
        let sent = headers(&host, T0);
        assert!(sent.iter().any(|(n, _)| *n == INSTANCE_HEADER));
        assert!(!sent.iter().any(|(n, _)| *n == NODE_HEADER));
        assert!(sent.iter().any(|(n, _)| *n == BUILD_HEADER));
    }
}
