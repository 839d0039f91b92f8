//! Turns cargo's `filter.wasm` into the one Tollgate ships, `target/filter.wasm`.
//!
//! Two binaryen passes, both about what Envoy loads rather than what rustc
//! can do on its own:
//! - `wasm-metadce` keeps only the exports listed in `filter/exports.txt`.
//!   The proxy-wasm SDK exports every callback of the ABI, and Envoy calls
//!   each one it finds (`proxy_on_log` and `proxy_on_done` on every request)
//!   even when the filter leaves it at the SDK's do-nothing default. Envoy
//!   treats a missing callback as "continue", so dropping them saves those
//!   calls into the VM, and the code behind them.
//! - `wasm-opt -Oz` shrinks what LTO left. `-O3` gave a file 6.5 KB larger
//!   and no difference in Envoy CPU per request that the benchmark could
//!   tell from its noise (added CPU at 1k keys, two runs each, 2026-11-23:
//!   40.7 and 30.7 µs with `-O3`, 40.3 and 32.3 µs with `-Oz`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{root, run, Result};

/// What rustc's wasm32-wasip1 target emits (Rust ≥ 1.82). binaryen 108
/// assumes the MVP unless told, and refuses these instructions otherwise.
const FEATURES: [&str; 6] = [
    "--enable-bulk-memory",
    "--enable-sign-ext",
    "--enable-nontrapping-float-to-int",
    "--enable-mutable-globals",
    "--enable-reference-types",
    "--enable-multivalue",
];

/// The exports Envoy needs from the filter, one per line (`#` comments).
fn kept_exports() -> Result<Vec<String>> {
    let path = root().join("filter/exports.txt");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let exports: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if exports.is_empty() {
        return Err(format!("{}: lists no export", path.display()));
    }
    Ok(exports)
}

/// The reachability graph `wasm-metadce` reads: one root reaching every
/// kept export; anything it does not reach is removed.
fn metadce_graph(exports: &[String]) -> String {
    let node = |e: &String| format!("\"export:{e}\"");
    let reaches: Vec<String> = exports.iter().map(node).collect();
    let mut graph = format!(
        "[{{\"name\": \"envoy\", \"root\": true, \"reaches\": [{}]}}",
        reaches.join(", ")
    );
    for e in exports {
        graph.push_str(&format!(
            ",\n{{\"name\": {}, \"export\": \"{e}\"}}",
            node(e)
        ));
    }
    graph.push(']');
    graph
}

/// The names in a module's export section, from `wasm-dis`'s text.
fn exports_of(wasm: &Path) -> Result<Vec<String>> {
    let out = Command::new("wasm-dis")
        .args(FEATURES)
        .arg(wasm)
        .output()
        .map_err(|e| format!("wasm-dis: cannot start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "wasm-dis {} failed ({})",
            wasm.display(),
            out.status
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("(export \""))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect())
}

/// Writes the shipped filter from cargo's `built` to `shipped`.
pub fn ship(built: &Path, shipped: &Path) -> Result {
    ship_with(built, shipped, &[])
}

/// [`ship`], keeping `more` exports than `filter/exports.txt` lists (a
/// test build's callbacks the shipped filter has no use for).
pub fn ship_with(built: &Path, shipped: &Path, more: &[&str]) -> Result {
    let mut exports = kept_exports()?;
    exports.extend(more.iter().map(|e| (*e).to_owned()));
    let missing: Vec<&String> = {
        let present = exports_of(built)?;
        exports.iter().filter(|e| !present.contains(e)).collect()
    };
    if !missing.is_empty() {
        return Err(format!(
            "{} lacks exports that filter/exports.txt keeps: {missing:?}",
            built.display()
        ));
    }
    let dir = shipped.parent().unwrap_or(Path::new("."));
    let graph = dir.join("filter-exports.graph.json");
    let pruned = dir.join("filter.pruned.wasm");
    std::fs::write(&graph, metadce_graph(&exports))
        .map_err(|e| format!("{}: {e}", graph.display()))?;
    // wasm-metadce prints the removed exports on stdout; keep the log quiet.
    let out = Command::new("wasm-metadce")
        .args(FEATURES)
        .arg("-f")
        .arg(&graph)
        .arg(built)
        .arg("-o")
        .arg(&pruned)
        .output()
        .map_err(|e| format!("wasm-metadce: cannot start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "wasm-metadce failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    run(
        "wasm-opt -Oz",
        Command::new("wasm-opt")
            .arg("-Oz")
            .args(FEATURES)
            .arg(&pruned)
            .arg("-o")
            .arg(shipped),
    )?;
    let _ = std::fs::remove_file(&pruned);
    let shipped_exports = exports_of(shipped)?;
    if shipped_exports.len() != exports.len() {
        return Err(format!(
            "{} exports {shipped_exports:?}, not exactly filter/exports.txt",
            shipped.display()
        ));
    }
    let bytes = std::fs::metadata(shipped)
        .map_err(|e| format!("{}: {e}", shipped.display()))?
        .len();
    println!("{}: {bytes} bytes", shipped.display());
    Ok(())
}

/// Most bytes the shipped filter may take: issue 23 let its size give way
/// to CPU (`opt-level = 3`), within 300 KB. Checked by `cargo xtask test`,
/// as the size of a build is the same on every run of one toolchain: it
/// crept past the bound unnoticed once, reported only by a benchmark.
pub const MAX_FILTER_BYTES: u64 = 300_000;

/// Fails if the filter shipped at `shipped` is larger than [`MAX_FILTER_BYTES`].
pub fn check_size(shipped: &Path) -> Result {
    let bytes = std::fs::metadata(shipped)
        .map_err(|e| format!("{}: {e}", shipped.display()))?
        .len();
    if bytes > MAX_FILTER_BYTES {
        return Err(format!(
            "{} is {bytes} bytes, over the {MAX_FILTER_BYTES} it may take (issue 23)",
            shipped.display()
        ));
    }
    Ok(())
}

/// cargo's output for the filter, before [`ship`].
pub fn built_filter() -> PathBuf {
    root().join("target/wasm32-wasip1/release/filter.wasm")
}
