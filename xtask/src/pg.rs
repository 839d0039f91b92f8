//! The tests' throwaway PostgreSQL ([`tollgate_launch::postgres`]) on
//! Debian's programs, installed when missing.

use tollgate_launch::postgres::Cluster;

use crate::{install, Result};

pub fn start() -> Result<Cluster> {
    tollgate_launch::postgres::start(&install::postgres()?)
}

/// On SIGINT, SIGTERM or SIGHUP: stop the server, delete its data, exit 130.
/// For callers that do not watch for signals themselves, like `test`.
pub fn clean_up_on_signal(cluster: &Cluster) -> Result {
    let clean_up = cluster.clean_up();
    ctrlc::set_handler(move || {
        clean_up();
        std::process::exit(130);
    })
    .map_err(|e| format!("cannot handle signals: {e}"))
}
