//! Images: what `cargo xtask image` builds is reproducible, the filter image
//! pushed to a registry comes back through an Istio-style pull byte for byte
//! and by digest, and the control-plane image's root file system runs
//! `serve` as its non-root user.
//!
//! The tests run the xtask binary named by `TOLLGATE_XTASK` (so they build
//! images without starting cargo), on `TOLLGATE_FILTER_WASM` and on the
//! control-plane image `cargo xtask test` built into
//! `TOLLGATE_CONTROL_PLANE_IMAGE`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;
use tollgate_e2e::harness::{
    env_path, eventually, free_port, stop, unique_name, xtask_image, ADMIN_TOKEN, SYNC_TOKEN,
};
use tollgate_e2e::registry::{digest, pull_wasm, Registry};

/// Every file under `dir`, by relative path.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).expect("a readable directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("a readable file");
                let relative = path.strip_prefix(dir).expect("under dir").to_path_buf();
                out.insert(relative, bytes);
            }
        }
    }
    out
}

/// A blob of the layout in `dir`, checked against its digest.
fn blob(dir: &Path, digest_text: &str) -> Vec<u8> {
    let hex = digest_text
        .strip_prefix("sha256:")
        .expect("a sha256 digest");
    let bytes =
        std::fs::read(dir.join("blobs/sha256").join(hex)).expect("the blob is in the layout");
    assert_eq!(
        digest(&bytes),
        digest_text,
        "blob {hex} does not have its digest"
    );
    bytes
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("JSON")
}

/// The layout's one manifest: its digest and parsed JSON.
fn manifest(dir: &Path) -> (String, Value) {
    let index = json(&std::fs::read(dir.join("index.json")).expect("index.json"));
    let manifests = index["manifests"]
        .as_array()
        .expect("index.json lists manifests");
    assert_eq!(manifests.len(), 1, "{index}");
    let digest = manifests[0]["digest"]
        .as_str()
        .expect("a digest")
        .to_owned();
    let manifest = json(&blob(dir, &digest));
    (digest, manifest)
}

#[test]
fn two_builds_of_the_filter_image_have_one_digest() {
    let wasm = env_path("TOLLGATE_FILTER_WASM");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = xtask_image(&[
        OsStr::new("--wasm"),
        wasm.as_os_str(),
        "--out".as_ref(),
        a.path().as_os_str(),
    ]);
    let second = xtask_image(&[
        OsStr::new("--wasm"),
        wasm.as_os_str(),
        "--out".as_ref(),
        b.path().as_os_str(),
    ]);
    assert_eq!(first, second);
    let (files_a, files_b) = (files(a.path()), files(b.path()));
    assert_eq!(
        files_a.keys().collect::<Vec<_>>(),
        files_b.keys().collect::<Vec<_>>()
    );
    assert!(files_a == files_b, "the two layouts differ in content");
    // The printed digest is the layout's manifest, a compat image of plugin.wasm.
    let (in_layout, manifest) = manifest(a.path());
    assert_eq!(in_layout, first);
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
}

#[tokio::test]
async fn the_pushed_filter_image_is_pulled_by_tag_byte_for_byte_and_by_digest() {
    let wasm = env_path("TOLLGATE_FILTER_WASM");
    let registry = Registry::start().await;
    let out = tempfile::tempdir().unwrap();
    let tag = unique_name("e2e");
    let target = format!("{}/tollgate/filter:{tag}", registry.addr);
    let pushed = xtask_image(&[
        OsStr::new("--wasm"),
        wasm.as_os_str(),
        "--out".as_ref(),
        out.path().as_os_str(),
        "--push".as_ref(),
        target.as_ref(),
    ]);
    let module = pull_wasm(&registry.addr, "tollgate/filter", &tag, &pushed)
        .await
        .unwrap_or_else(|e| panic!("pulling {target}: {e}"));
    let file = std::fs::read(&wasm).expect("filter.wasm");
    assert!(module == file, "the pulled module is not filter.wasm");

    // A WasmPlugin pinned to another digest gets nothing.
    let wrong = digest(b"another build");
    let err = pull_wasm(&registry.addr, "tollgate/filter", &tag, &wrong)
        .await
        .expect_err("a wrong digest is refused");
    assert!(err.contains("not the pinned"), "{err}");

    // Pushing the same image again finds every blob there and changes nothing.
    let again = xtask_image(&[
        OsStr::new("--wasm"),
        wasm.as_os_str(),
        "--out".as_ref(),
        out.path().as_os_str(),
        "--push".as_ref(),
        target.as_ref(),
    ]);
    assert_eq!(again, pushed);
}

/// Unpacks every layer of the layout's image into `rootfs`, owners and modes kept.
fn unpack(layout: &Path, manifest: &Value, rootfs: &Path) {
    for layer in manifest["layers"].as_array().expect("layers") {
        assert_eq!(
            layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
            "{layer}"
        );
        let bytes = blob(layout, layer["digest"].as_str().expect("a digest"));
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.unpack(rootfs).expect("the layer unpacks");
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// The effective uid of process `pid`, from /proc.
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// coreutils' `chroot`, found on this process's PATH: the child's
/// environment is the image's, which has none.
fn chroot() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join("chroot"))
        .find(|candidate| candidate.is_file())
        .expect("chroot (coreutils) on PATH")
}

/// A process stopped by pid when dropped.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            stop(child);
        }
    }
}

#[tokio::test]
async fn the_control_plane_image_runs_serve_as_its_nonroot_user_under_chroot() {
    assert_eq!(
        uid_of(std::process::id()),
        Some(0),
        "this test unpacks the image with its owners and chroots into it: run it as root"
    );
    let layout = env_path("TOLLGATE_CONTROL_PLANE_IMAGE");
    let (_, manifest) = manifest(&layout);
    let config = json(&blob(
        &layout,
        manifest["config"]["digest"]
            .as_str()
            .expect("a config digest"),
    ));
    let run = &config["config"];
    let user = run["User"].as_str().expect("a User").to_owned();
    assert_eq!(user, "65532:65532");
    let entrypoint = strings(&run["Entrypoint"]);
    assert_eq!(entrypoint, ["/control-plane", "serve"]);
    let env = strings(&run["Env"]);
    assert!(
        env.contains(&"CONTROL_PLANE_DATA_DIR=/data".to_owned()),
        "{env:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    // Its own directory, 0755: the temp dir is 0700, and after the chroot
    // it is `/`, which the non-root user must be able to enter.
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    unpack(&layout, &manifest, &rootfs);
    let meta = |path: &str| std::fs::metadata(rootfs.join(path)).expect("in the image");
    assert_eq!(meta("control-plane").mode() & 0o7777, 0o755);
    assert_eq!((meta("data").uid(), meta("data").gid()), (65532, 65532));
    assert_eq!(meta("tmp").mode() & 0o7777, 0o1777);
    let log = dir.path().join("control-plane.log");
    let port = free_port();
    let mut command = Command::new(chroot());
    command
        .arg(format!("--userspec={user}"))
        .arg(&rootfs)
        .args(&entrypoint)
        // Only what the image says, as a container runtime would, and the
        // address and tokens a deployment sets.
        .env_clear()
        .envs(env.iter().filter_map(|pair| pair.split_once('=')))
        .env("CONTROL_PLANE_ADDR", format!("127.0.0.1:{port}"))
        .env("CONTROL_PLANE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("CONTROL_PLANE_SYNC_TOKEN", SYNC_TOKEN);
    let out = std::fs::File::create(&log).unwrap();
    let err = out.try_clone().unwrap();
    let server = Running(Some(
        command
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("chroot starts"),
    ));
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/healthz");
    eventually(
        Duration::from_secs(30),
        "/healthz of the image's control plane",
        || {
            let request = client.get(&url).send();
            let log = log.clone();
            async move {
                match request.await {
                    Ok(r) if r.status().is_success() => Some(()),
                    Ok(r) => panic!(
                        "/healthz answered {}\n{}",
                        r.status(),
                        std::fs::read_to_string(&log).unwrap_or_default()
                    ),
                    Err(_) => None,
                }
            }
        },
    )
    .await;
    // chroot execs the entrypoint: the pid is the server's, running as 65532.
    assert_eq!(uid_of(server.0.as_ref().map_or(0, Child::id)), Some(65532));
    assert!(
        rootfs.join("data/tollgate.db").is_file(),
        "no SQLite database in the image's /data"
    );
    drop(server);
}

#[test]
fn the_control_plane_image_rebuilt_from_its_own_binary_has_its_digest() {
    let layout = env_path("TOLLGATE_CONTROL_PLANE_IMAGE");
    let (original, manifest) = manifest(&layout);
    // The binary as the image holds it, read back without unpacking to disk.
    let layer = manifest["layers"]
        .as_array()
        .and_then(|l| l.last())
        .expect("a layer");
    let bytes = blob(&layout, layer["digest"].as_str().expect("a digest"));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
    let mut binary = Vec::new();
    for entry in archive.entries().expect("a tar.gz") {
        let mut entry = entry.expect("an entry");
        if entry.path().expect("a path") == Path::new("control-plane") {
            entry.read_to_end(&mut binary).expect("the binary");
        }
    }
    assert!(!binary.is_empty(), "no /control-plane in the image");
    let dir = tempfile::tempdir().unwrap();
    let binary_path = dir.path().join("control-plane");
    std::fs::write(&binary_path, &binary).unwrap();
    let build = |out: &str| {
        xtask_image(&[
            OsStr::new("--control-plane"),
            "--binary".as_ref(),
            binary_path.as_os_str(),
            "--out".as_ref(),
            dir.path().join(out).as_os_str(),
        ])
    };
    let (a, b) = (build("a"), build("b"));
    assert_eq!(a, b);
    assert_eq!(a, original, "the same binary packed into another image");
}
