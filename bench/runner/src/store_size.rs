//! What the control plane's SQLite database holds during a soak: its size on
//! disk and the rows of the tables that grow with traffic, minute by minute,
//! and at the end the bytes of each table with its indexes. Read with the
//! `sqlite3` shell, read-only beside the running server (in WAL mode a reader
//! never waits for the writer), so that the README can project a year of a
//! million keys from measured rows and bytes rather than from guesses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::Result;

/// The tables whose rows grow with traffic or time (see
/// `control-plane/src/store/retention.rs` for what bounds each).
pub const GROWING: &[&str] = &[
    "usage_hourly",
    "usage_daily",
    "usage_batches",
    "quota_counts",
    "quota_reporters",
    "audit_log",
    "api_keys",
    "key_last_used",
];

/// The database at one moment of the run.
#[derive(Debug, Clone)]
pub struct StoreSample {
    pub at: Duration,
    /// The database file and its write-ahead log.
    pub bytes: u64,
    pub rows: BTreeMap<String, u64>,
}

/// The control plane's database in its `--data-dir`.
pub fn database(data_dir: &Path) -> PathBuf {
    data_dir.join("tollgate.db")
}

/// Its size and the rows of [`GROWING`] now.
pub fn sample(db: &Path, at: Duration) -> Result<StoreSample> {
    let bytes = ["", "-wal"]
        .iter()
        .map(|suffix| {
            let mut path = db.as_os_str().to_owned();
            path.push(suffix);
            std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
        })
        .sum();
    let counts: Vec<String> = GROWING
        .iter()
        .map(|t| format!("SELECT '{t}', COUNT(*) FROM {t}"))
        .collect();
    let rows = pairs(&query(db, &counts.join(" UNION ALL "))?)?;
    Ok(StoreSample { at, bytes, rows })
}

/// Bytes of each table, its indexes included (SQLite's `dbstat`).
pub fn bytes_by_table(db: &Path) -> Result<BTreeMap<String, u64>> {
    pairs(&query(
        db,
        "SELECT s.tbl_name, SUM(d.pgsize) FROM dbstat d \
         JOIN sqlite_schema s ON s.name = d.name GROUP BY s.tbl_name",
    )?)
}

fn query(db: &Path, sql: &str) -> Result<String> {
    let out = Command::new("sqlite3")
        .args(["-readonly", "-cmd", ".timeout 10000"])
        .arg(db)
        .arg(sql)
        .output()
        .map_err(|e| format!("sqlite3 (cargo xtask soak installs it): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "sqlite3 {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `name|number` lines.
fn pairs(text: &str) -> Result<BTreeMap<String, u64>> {
    text.lines()
        .map(|line| {
            let (name, n) = line
                .split_once('|')
                .ok_or_else(|| format!("sqlite3 answered {line:?}"))?;
            let n = n
                .trim()
                .parse()
                .map_err(|_| format!("sqlite3 answered {line:?}"))?;
            Ok((name.to_owned(), n))
        })
        .collect()
}
