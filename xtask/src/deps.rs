//! `cargo xtask deps`: what the workspace depends on, checked against our
//! policy from the lock file alone, offline, in about a second (a step of
//! `cargo xtask test`). The checks `cargo deny` would make, less one:
//!
//! - **Sources.** Every crate comes from crates.io through `Cargo.lock`, or
//!   is a path inside this repository. No git dependency, no other registry.
//! - **Licences.** Every crate's SPDX expression is satisfied by licences we
//!   can ship under Apache-2.0 ([`ALLOWED_LICENCES`]); `A OR B` needs one,
//!   `A AND B` both.
//! - **Duplicate versions.** A crate built in two versions costs build time
//!   and binary size. Those we carry are listed with the reason
//!   ([`KNOWN_DUPLICATES`]); a new one fails the check, naming who pulls in
//!   each version, and so does a listed one that is gone (the list stays true).
//!
//! Security advisories are not checked: the RustSec database is a git
//! repository on GitHub, which the CI machine cannot reach.
//!
//! Only what is built for the targets we ship counts (`--filter-platform`):
//! the host and `wasm32-wasip1`, not Windows-only crates.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

use crate::{root, Result};

const CRATES_IO: [&str; 2] = [
    "registry+https://github.com/rust-lang/crates.io-index",
    "sparse+https://index.crates.io/",
];

/// Licences a crate may carry (alone or as the chosen side of an `OR`).
/// Permissive ones, plus MPL-2.0 (file-level copyleft: it binds changes to
/// its own files, which we use unchanged; only the browser tests'
/// `webdriver` carries it) and CDLA-Permissive-2.0 (the Mozilla root
/// certificates' data in `webpki-roots`).
const ALLOWED_LICENCES: &[&str] = &[
    "0BSD",
    "Apache-2.0",
    "Apache-2.0 WITH LLVM-exception",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "BSL-1.0",
    "CC0-1.0",
    "CDLA-Permissive-2.0",
    "ISC",
    "MIT",
    "MIT-0",
    "MPL-2.0",
    "Unicode-3.0",
    "Unicode-DFS-2016",
    "Unlicense",
    "Zlib",
];

/// Crates built in more than one version, and why we live with it: in each
/// case crates we need ask for different major versions, and removing one
/// side means replacing or forking a dependency. Most come from the browser
/// tests' `fantoccini` → `webdriver` (older `http`, `cookie`, `thiserror`,
/// and ICU4X 1 for text segmentation, where `url` has moved to ICU4X 2).
/// Some come from the benchmark's rate limit service (`bench/rls`): its
/// `limitador` always builds `tonic-build` 0.12, and with it prost 0.13,
/// while tonic 0.14 is on prost 0.14.
const KNOWN_DUPLICATES: &[(&str, &str)] = &[
    ("base64", "reqwest, sqlx and webdriver on 0.22; hyper-util, ureq and utoipa-swagger-ui on 0.23"),
    ("bit-vec", "bit-set (cel's parser, limitador) on 0.8; yasna on 0.9, optional and not built"),
    ("cookie", "webdriver on 0.16, fantoccini on 0.18"),
    ("cpufeatures", "sha1 and sha2 0.10 on 0.2; chacha20 (rand 0.10) on 0.3"),
    ("embedded-io", "postcard (limitador) names 0.4 and 0.6, both optional and not built"),
    ("foldhash", "hashbrown 0.15 on 0.1; hashbrown 0.16 and 0.17 on 0.2"),
    ("getrandom", "ring and rand 0.8 on 0.2; rand 0.9 on 0.3; rand 0.10, tempfile and zip on 0.4"),
    ("hashbrown", "dashmap (limitador) on 0.14, sqlx-core on 0.15, proxy-wasm on 0.16, indexmap on 0.17"),
    ("hashlink", "sqlx-core on 0.10, yaml-rust2 on 0.12"),
    ("http", "webdriver on 0.2; hyper, axum and reqwest on 1"),
    ("icu_collections", "ICU4X 1 (webdriver's icu_segmenter) and 2 (url)"),
    ("icu_provider", "ICU4X 1 (webdriver's icu_segmenter) and 2 (url)"),
    ("litemap", "ICU4X 1 and 2"),
    ("prost", "limitador's build-dependency tonic-build 0.12 on 0.13; tonic 0.14 and bench/rls on 0.14"),
    ("prost-derive", "prost 0.13 and 0.14"),
    ("rand", "sqlx-postgres and rsa on 0.8; ours on 0.9; proptest and quinn on 0.10"),
    ("rand_chacha", "rand 0.8 and 0.9"),
    ("rand_core", "rand 0.8, 0.9 and 0.10"),
    ("syn", "sqlx's, tracing's and thiserror 1's macros on 2; serde's, tokio's, clap's, utoipa's and askama's on 3"),
    ("synstructure", "ICU4X 1 and 2's derives"),
    ("thiserror", "webdriver on 1, sqlx and quinn on 2"),
    ("thiserror-impl", "thiserror 1 and 2"),
    ("tinystr", "ICU4X 1 and 2"),
    ("writeable", "ICU4X 1 and 2"),
    ("yoke", "ICU4X 1 and 2"),
    ("yoke-derive", "ICU4X 1 and 2"),
    ("zerovec", "ICU4X 1 and 2"),
    ("zerovec-derive", "ICU4X 1 and 2"),
];

/// One crate of the resolved graph.
struct Package {
    name: String,
    version: String,
    source: Option<String>,
    licence: Option<String>,
    manifest: String,
}

pub fn check() -> Result {
    let host = host_triple()?;
    let mut packages: BTreeMap<String, Package> = BTreeMap::new();
    let mut dependents: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut workspace_root = String::new();
    for target in [host.as_str(), "wasm32-wasip1"] {
        let metadata = metadata(target)?;
        workspace_root = text(&metadata["workspace_root"]).unwrap_or_default();
        for p in metadata["packages"].as_array().into_iter().flatten() {
            let Some(id) = text(&p["id"]) else { continue };
            packages.entry(id).or_insert_with(|| Package {
                name: text(&p["name"]).unwrap_or_default(),
                version: text(&p["version"]).unwrap_or_default(),
                source: text(&p["source"]),
                licence: text(&p["license"]),
                manifest: text(&p["manifest_path"]).unwrap_or_default(),
            });
        }
        for node in metadata["resolve"]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let Some(id) = text(&node["id"]) else {
                continue;
            };
            for dep in node["dependencies"].as_array().into_iter().flatten() {
                if let Some(dep) = text(dep) {
                    dependents.entry(dep).or_default().insert(id.clone());
                }
            }
        }
    }

    let mut problems = Vec::new();
    for p in packages.values() {
        match &p.source {
            None if p.manifest.starts_with(&workspace_root) => {}
            None => problems.push(format!(
                "{} {}: a path outside the repository ({})",
                p.name, p.version, p.manifest
            )),
            Some(source) if CRATES_IO.contains(&source.as_str()) => {}
            Some(source) => problems.push(format!(
                "{} {}: from {source}, not crates.io",
                p.name, p.version
            )),
        }
        // Our own crates take the workspace's licence.
        if p.source.is_some() {
            match &p.licence {
                None => problems.push(format!("{} {}: no SPDX licence", p.name, p.version)),
                Some(expr) if !satisfied(expr, ALLOWED_LICENCES) => problems.push(format!(
                    "{} {}: licence {expr:?} is not one we allow",
                    p.name, p.version
                )),
                Some(_) => {}
            }
        }
    }

    let mut versions: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, p) in &packages {
        versions.entry(&p.name).or_default().push(id);
    }
    let duplicated: BTreeSet<&str> = versions
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|(name, _)| *name)
        .collect();
    let known: BTreeSet<&str> = KNOWN_DUPLICATES.iter().map(|(name, _)| *name).collect();
    for name in duplicated.difference(&known) {
        let pulled: Vec<String> = versions[name]
            .iter()
            .map(|id| {
                let by: Vec<String> = dependents
                    .get(*id)
                    .into_iter()
                    .flatten()
                    .filter_map(|d| packages.get(d))
                    .map(|d| format!("{} {}", d.name, d.version))
                    .collect();
                format!("{} (by {})", packages[*id].version, by.join(", "))
            })
            .collect();
        problems.push(format!(
            "{name} is built in {} versions: {}; remove one, or add it to KNOWN_DUPLICATES in xtask/src/deps.rs with the reason",
            pulled.len(),
            pulled.join("; ")
        ));
    }
    for name in known.difference(&duplicated) {
        problems.push(format!(
            "{name} is no longer built twice: take it off KNOWN_DUPLICATES in xtask/src/deps.rs"
        ));
    }

    let from_crates_io = packages.values().filter(|p| p.source.is_some()).count();
    if problems.is_empty() {
        println!(
            "{from_crates_io} crates from crates.io and {} of ours, every licence allowed, \
             {} crates in two or more versions, each known (advisories not checked: no network)",
            packages.len() - from_crates_io,
            duplicated.len()
        );
        Ok(())
    } else {
        Err(format!(
            "the dependencies break our policy:\n  {}",
            problems.join("\n  ")
        ))
    }
}

fn host_triple() -> Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .map_err(|e| format!("rustc -vV: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .ok_or_else(|| "rustc -vV names no host".to_owned())
}

fn metadata(target: &str) -> Result<Value> {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .args(["--filter-platform", target])
        .current_dir(root())
        .output()
        .map_err(|e| format!("cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata --filter-platform {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata: {e}"))
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// Whether the SPDX `expression` can be met with `allowed` licences. It
/// reads what crates.io holds: `OR`, `AND`, parentheses, `WITH` exceptions
/// (a licence with its exception is one term), and the old `A/B` for `A OR B`.
pub fn satisfied(expression: &str, allowed: &[&str]) -> bool {
    let spaced = expression
        .replace('(', " ( ")
        .replace(')', " ) ")
        .replace('/', " OR ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    // `X WITH Y` is one term.
    let mut terms: Vec<String> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if tokens.get(i + 1) == Some(&"WITH") && i + 2 < tokens.len() {
            terms.push(format!("{} WITH {}", tokens[i], tokens[i + 2]));
            i += 3;
        } else {
            terms.push(tokens[i].to_owned());
            i += 1;
        }
    }
    let mut at = 0;
    let value = or_expr(&terms, &mut at, allowed);
    value == Some(true) && at == terms.len()
}

// A small recursive descent: or := and ("OR" and)*; and := atom ("AND" atom)*;
// atom := licence | "(" or ")". `None` is a malformed expression.
fn or_expr(t: &[String], at: &mut usize, allowed: &[&str]) -> Option<bool> {
    let mut value = and_expr(t, at, allowed)?;
    while t.get(*at).map(String::as_str) == Some("OR") {
        *at += 1;
        value |= and_expr(t, at, allowed)?;
    }
    Some(value)
}

fn and_expr(t: &[String], at: &mut usize, allowed: &[&str]) -> Option<bool> {
    let mut value = atom(t, at, allowed)?;
    while t.get(*at).map(String::as_str) == Some("AND") {
        *at += 1;
        value &= atom(t, at, allowed)?;
    }
    Some(value)
}

fn atom(t: &[String], at: &mut usize, allowed: &[&str]) -> Option<bool> {
    let token = t.get(*at)?;
    *at += 1;
    match token.as_str() {
        "(" => {
            let value = or_expr(t, at, allowed)?;
            if t.get(*at).map(String::as_str) != Some(")") {
                return None;
            }
            *at += 1;
            Some(value)
        }
        ")" | "OR" | "AND" => None,
        licence => Some(allowed.contains(&licence)),
    }
}

#[cfg(test)]
mod tests {
    use super::satisfied;

    const OK: &[&str] = &["MIT", "Apache-2.0", "Apache-2.0 WITH LLVM-exception", "ISC"];

    #[test]
    fn or_needs_one_and_needs_both() {
        assert!(satisfied("MIT", OK));
        assert!(satisfied("MIT OR GPL-3.0", OK));
        assert!(satisfied("GPL-3.0 OR MIT", OK));
        assert!(!satisfied("GPL-3.0", OK));
        assert!(satisfied("Apache-2.0 AND ISC", OK));
        assert!(!satisfied("MIT AND GPL-3.0", OK));
        assert!(satisfied("(MIT OR GPL-3.0) AND ISC", OK));
        assert!(!satisfied("(GPL-2.0 OR GPL-3.0) AND MIT", OK));
    }

    #[test]
    fn reads_the_old_slash_and_exceptions() {
        assert!(satisfied("MIT/Apache-2.0", OK));
        assert!(satisfied("Apache-2.0 / MIT", OK));
        assert!(satisfied("Apache-2.0 WITH LLVM-exception OR GPL-3.0", OK));
        assert!(!satisfied("GPL-2.0 WITH Classpath-exception-2.0", OK));
    }

    #[test]
    fn malformed_is_refused() {
        for bad in ["", "MIT OR", "(MIT", "MIT)", "AND MIT", "MIT MIT"] {
            assert!(!satisfied(bad, OK), "{bad:?}");
        }
    }
}
