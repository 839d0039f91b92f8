//! Replays the committed corpus: every file under `fuzz/corpus/<target>/`
//! through its target, so the seeds and every crash libFuzzer once found
//! stay checked by `cargo test` without libFuzzer or instrumentation.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use tollgate_fuzz::TARGETS;

fn fuzz_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every file of `target`'s corpus, naming each one that fails.
fn replay(target: &str) {
    let (_, check) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a target of that name");
    let files = corpus(target);
    assert!(!files.is_empty(), "fuzz/corpus/{target} is empty");
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let input = fs::read(path).expect("a readable corpus file");
            catch_unwind(AssertUnwindSafe(|| check(&input))).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target} fails on {failed:#?}");
}

#[test]
fn key_corpus() {
    replay("key");
}

#[test]
fn credential_corpus() {
    replay("credential");
}

#[test]
fn json_differential_corpus() {
    replay("json_differential");
}

#[test]
fn sync_decode_corpus() {
    replay("sync_decode");
}

#[test]
fn config_validation_corpus() {
    replay("config_validation");
}

/// A target added to the list has its corpus, its libFuzzer binary and
/// its place in `cargo xtask fuzz`, and nothing has them without a target.
#[test]
fn every_target_is_wired_up() {
    let bins = fs::read_to_string(fuzz_dir().join("libfuzzer/Cargo.toml")).expect("its manifest");
    let xtask = fs::read_to_string(fuzz_dir().join("../xtask/src/fuzz.rs")).expect("xtask's list");
    let mut dirs: Vec<String> = fs::read_dir(fuzz_dir().join("corpus"))
        .expect("fuzz/corpus")
        .map(|entry| {
            entry
                .expect("a corpus dir")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    dirs.sort();
    let mut names: Vec<String> = TARGETS.iter().map(|(name, _)| (*name).to_owned()).collect();
    names.sort();
    assert_eq!(dirs, names, "fuzz/corpus/ has one directory per target");
    for (name, _) in TARGETS {
        assert!(
            bins.contains(&format!("name = \"{name}\"")),
            "no [[bin]] {name} in fuzz/libfuzzer/Cargo.toml"
        );
        assert!(
            fs::read_to_string(fuzz_dir().join(format!("libfuzzer/targets/{name}.rs")))
                .is_ok_and(|source| source.contains(&format!("tollgate_fuzz::{name}::check"))),
            "fuzz/libfuzzer/targets/{name}.rs does not run {name}::check"
        );
        assert!(
            xtask.contains(&format!("\"{name}\"")),
            "xtask/src/fuzz.rs does not run {name}"
        );
    }
    assert_eq!(bins.matches("[[bin]]").count(), TARGETS.len());
}
