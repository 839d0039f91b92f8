//! The fleet in the dashboard (admin): every Envoy the registry knows, what
//! it runs, the config version it applied and how far behind it is; and the
//! one line other pages show after a change, "applied on N of M live
//! proxies", read from the same registry as `GET /v1/propagation/{version}`.

use askama::Template;
use axum::extract::State;

use crate::auth::Principal;
use crate::dashboard::page::{count, ok, when, Chrome, PageError, PageResult};
use crate::dashboard::session::Signed;
use crate::fleet::{Propagation, ProxyView};
use crate::routes::proxies::list as registry;
use crate::state::AppState;

/// How far the current config version has reached, for the admin's pages.
pub struct Reach {
    pub version: String,
    pub applied: usize,
    pub live: usize,
    /// Live or stale proxies that have not applied it, by node id.
    pub missing: Vec<String>,
}

/// The current config version's reach, for the admin; `None` for a tenant,
/// to whom the fleet is none of its business.
pub async fn reach(state: &AppState, principal: &Principal) -> Result<Option<Reach>, PageError> {
    if !principal.is_admin() {
        return Ok(None);
    }
    let fleet = registry(state).await?;
    let propagation = Propagation::of(fleet.current_version, &fleet.items);
    Ok(Some(Reach {
        version: count(fleet.current_version),
        applied: propagation.applied,
        live: propagation.live,
        missing: propagation
            .missing
            .into_iter()
            .map(|m| format!("{} ({})", m.node_id, m.status.as_str()))
            .collect(),
    }))
}

pub struct ProxyLine {
    pub node_id: String,
    pub cluster: String,
    pub instance_id: String,
    pub build: String,
    pub applied: String,
    pub lag: String,
    pub last_seen: String,
    pub status: &'static str,
}

impl ProxyLine {
    fn of(view: ProxyView) -> Self {
        let lag = match (view.lag_versions, view.lag_ms) {
            (0, _) => "up to date".to_owned(),
            (n, Some(ms)) => format!("{n} behind, {} s", ms / 1000),
            (n, None) => format!("{n} behind"),
        };
        Self {
            applied: view
                .applied_version
                .map_or_else(|| "none yet".to_owned(), |v| format!("v{}", count(v))),
            last_seen: when(&view.last_seen),
            status: view.status.as_str(),
            node_id: view.node_id,
            cluster: view.cluster,
            instance_id: view.instance_id,
            build: view.build,
            lag,
        }
    }
}

#[derive(Template)]
#[template(path = "proxies.html")]
struct ProxiesPage {
    chrome: Chrome,
    current_version: String,
    stale_after_s: u64,
    gone_after_s: u64,
    proxies: Vec<ProxyLine>,
    reach: Option<Reach>,
}

/// `GET /dashboard/proxies`.
pub async fn list(State(state): State<AppState>, signed: Signed) -> PageResult {
    signed.principal.require_admin()?;
    let reach = reach(&state, &signed.principal).await?;
    let fleet = registry(&state).await?;
    Ok(ok(&ProxiesPage {
        chrome: Chrome::new(&signed.principal, "Proxies", "proxies"),
        current_version: count(fleet.current_version),
        stale_after_s: fleet.stale_after_ms / 1000,
        gone_after_s: fleet.gone_after_ms / 1000,
        proxies: fleet.items.into_iter().map(ProxyLine::of).collect(),
        reach,
    }))
}
