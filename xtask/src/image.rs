//! `cargo xtask image`: the filter, or the control plane, as an OCI image
//! layout under `target/oci/`, the same bytes on every build of the same
//! input, its manifest digest printed on the last line of stdout.
//!
//! The filter image is what Istio's `WasmPlugin` pulls with `oci://`. Istio
//! takes three layouts; this is the "compat" one: an ordinary OCI image whose
//! last layer holds `plugin.wasm`, which every registry and mirror stores
//! without knowing about Wasm artifacts. The control-plane image is for the
//! Kubernetes manifests: one static musl binary, run as a non-root user with
//! its data in a volume, and nothing else (its HTTPS client carries its own
//! Mozilla roots, so no CA files either).
//!
//! `--push` sends the layout to a loopback registry (`push.rs`).

use std::path::{Path, PathBuf};

use crate::oci::{Entry, Image, RunConfig, Spec, PLUGIN_WASM};
use crate::{cargo, install, push, root, run, Result};

/// The user the control plane runs as: no name a host is likely to have,
/// the same number distroless images use.
const NONROOT: u32 = 65532;
const CONTROL_PLANE_PORT: u16 = 8080;
/// The cargo profile of the control plane's static build (root Cargo.toml).
const IMAGE_PROFILE: &str = "image";
/// The unoptimised profile `cargo xtask test` builds the image it checks
/// with (root Cargo.toml): what the image tests prove (a static binary that
/// runs chrooted as its user, the layout, the digest) does not depend on
/// optimisation, and the optimised build was 5 of CI's minutes.
pub const CHECK_PROFILE: &str = "image-check";
/// What Istio refuses to load, and a guard against packaging the wrong file.
const MAX_MODULE_BYTES: usize = 256 << 20;

#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    control_plane: bool,
    wasm: Option<PathBuf>,
    binary: Option<PathBuf>,
    out: Option<PathBuf>,
    push: Option<String>,
}

const USAGE: &str = "cargo xtask image [--control-plane] [--wasm <file> | --binary <file>] \
                     [--out <dir>] [--push <host:port>/<repository>:<tag>]";

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options::default();
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value ({USAGE})"))
        };
        match flag.as_str() {
            "--control-plane" => options.control_plane = true,
            "--wasm" => options.wasm = Some(value()?.into()),
            "--binary" => options.binary = Some(value()?.into()),
            "--out" => options.out = Some(value()?.into()),
            "--push" => options.push = Some(value()?),
            other => return Err(format!("unknown argument {other:?} ({USAGE})")),
        }
    }
    if options.control_plane && options.wasm.is_some() {
        return Err(format!(
            "--wasm packages the filter; the control-plane image takes --binary ({USAGE})"
        ));
    }
    if !options.control_plane && options.binary.is_some() {
        return Err(format!(
            "--binary is the control plane's; add --control-plane, or give the filter as --wasm ({USAGE})"
        ));
    }
    Ok(options)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The filter image's one layer: `plugin.wasm`, checked to be a module.
fn filter_spec(wasm: Vec<u8>, path: &Path) -> Result<Spec<'static>> {
    if !wasm.starts_with(b"\0asm") {
        return Err(format!(
            "{} is not a Wasm module (no \\0asm magic)",
            path.display()
        ));
    }
    if wasm.len() > MAX_MODULE_BYTES {
        return Err(format!(
            "{} is {} bytes, more than the 256 MiB Istio loads",
            path.display(),
            wasm.len()
        ));
    }
    Ok(Spec {
        // GOARCH and GOOS name the platform: nothing a container runtime runs.
        architecture: "wasm",
        os: "wasip1",
        run: None,
        layers: vec![vec![Entry::file(PLUGIN_WASM, 0o644, wasm)]],
    })
}

/// The image config's architecture for this machine's musl build.
fn oci_architecture() -> Result<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Ok("amd64"),
        "aarch64" => Ok("arm64"),
        other => Err(format!(
            "no control-plane image for {other}: only x86_64 and aarch64 hosts build one"
        )),
    }
}

fn musl_target() -> String {
    format!("{}-unknown-linux-musl", std::env::consts::ARCH)
}

/// How the control plane runs in the image.
fn control_plane_run_config() -> RunConfig {
    RunConfig {
        user: format!("{NONROOT}:{NONROOT}"),
        entrypoint: vec!["/control-plane".into(), "serve".into()],
        // The flags' environment names (control-plane/src/main.rs): listen on
        // every address of the pod, keep SQLite in the volume.
        env: vec![
            format!("CONTROL_PLANE_ADDR=0.0.0.0:{CONTROL_PLANE_PORT}"),
            "CONTROL_PLANE_DATA_DIR=/data".into(),
        ],
        exposed_ports: vec![format!("{CONTROL_PLANE_PORT}/tcp")],
        volumes: vec!["/data".into()],
        working_dir: "/".into(),
    }
}

/// The control plane's root file system, one layer.
fn control_plane_layer(binary: Vec<u8>) -> Vec<Entry> {
    let passwd = format!(
        "root:x:0:0:root:/root:/sbin/nologin\n\
         nonroot:x:{NONROOT}:{NONROOT}:nonroot:/data:/sbin/nologin\n"
    );
    let group = format!("root:x:0:\nnonroot:x:{NONROOT}:\n");
    vec![
        Entry::file("control-plane", 0o755, binary),
        Entry::dir("data", 0o755).owned_by(NONROOT, NONROOT),
        Entry::dir("etc", 0o755),
        Entry::file("etc/group", 0o644, group.into_bytes()),
        Entry::file("etc/passwd", 0o644, passwd.into_bytes()),
        // SQLite's temporary files, should it spill.
        Entry::dir("tmp", 0o1777),
    ]
}

/// Refuses what would not run in an image with no libc: anything but an ELF
/// executable without a program interpreter (PT_INTERP), i.e. a dynamic one.
fn check_static_elf(bytes: &[u8], path: &Path) -> Result {
    let shown = path.display();
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    // 64-bit, little-endian ELF: what both supported musl targets produce.
    if !bytes.starts_with(b"\x7fELF\x02\x01") {
        return Err(format!(
            "{shown} is not a 64-bit little-endian ELF executable"
        ));
    }
    let truncated = || format!("{shown}: a truncated ELF header");
    let phoff = u64_at(0x20)
        .and_then(|o| usize::try_from(o).ok())
        .ok_or_else(truncated)?;
    let phentsize = u16_at(0x36).ok_or_else(truncated)?;
    let phnum = u16_at(0x38).ok_or_else(truncated)?;
    for i in 0..phnum {
        const PT_INTERP: u32 = 3;
        let kind = i
            .checked_mul(phentsize)
            .and_then(|offset| offset.checked_add(phoff))
            .and_then(u32_at)
            .ok_or_else(truncated)?;
        if kind == PT_INTERP {
            return Err(format!(
                "{shown} is dynamically linked; the image has no libc: build it for {}",
                musl_target()
            ));
        }
    }
    Ok(())
}

fn control_plane_spec<'a>(binary: Vec<u8>, path: &Path, run: &'a RunConfig) -> Result<Spec<'a>> {
    check_static_elf(&binary, path)?;
    Ok(Spec {
        architecture: oci_architecture()?,
        os: "linux",
        run: Some(run),
        layers: vec![control_plane_layer(binary)],
    })
}

/// The static control plane, built for musl with the cargo `profile`
/// ([`IMAGE_PROFILE`] ships, [`CHECK_PROFILE`] is checked).
pub fn build_control_plane(profile: &str) -> Result<PathBuf> {
    let target = musl_target();
    install::musl(&target)?;
    // ring and SQLite are C: compile them against musl's headers too.
    let cc_var = format!("CC_{}", target.replace('-', "_"));
    run(
        "build the static control plane",
        cargo()
            .args(["build", "--profile", profile, "--target", &target])
            .args(["-p", "tollgate-control-plane", "--bin", "control-plane"])
            .env(cc_var, "musl-gcc"),
    )?;
    Ok(root()
        .join("target")
        .join(&target)
        .join(profile)
        .join("control-plane"))
}

pub fn default_out(control_plane: bool) -> PathBuf {
    root().join("target/oci").join(if control_plane {
        "control-plane"
    } else {
        "filter"
    })
}

/// Builds the control plane (unless given `binary`) and writes its image to
/// `out`; returns the manifest digest.
pub fn control_plane_image(binary: Option<&Path>, out: &Path) -> Result<String> {
    let binary = match binary {
        Some(path) => path.to_path_buf(),
        None => build_control_plane(IMAGE_PROFILE)?,
    };
    let run_config = control_plane_run_config();
    let spec = control_plane_spec(read(&binary)?, &binary, &run_config)?;
    write(&spec, out, &binary)
}

fn filter_image(wasm: Option<&Path>, out: &Path) -> Result<String> {
    let wasm = match wasm {
        Some(path) => path.to_path_buf(),
        None => {
            install::rust_bits()?;
            crate::build_filter()?;
            crate::filter_wasm()
        }
    };
    write(&filter_spec(read(&wasm)?, &wasm)?, out, &wasm)
}

fn write(spec: &Spec, out: &Path, from: &Path) -> Result<String> {
    let image = Image::pack(spec)?;
    image.write_layout(out)?;
    let layers: Vec<String> = image
        .layers
        .iter()
        .map(|l| format!("{} bytes", l.bytes.len()))
        .collect();
    println!(
        "{} -> OCI image layout {} (layer {})",
        from.display(),
        out.display(),
        layers.join(", ")
    );
    Ok(image.manifest.digest)
}

/// `cargo xtask image`.
pub fn image(args: &[String]) -> Result {
    let options = parse(args)?;
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| default_out(options.control_plane));
    // Refuse a bad --push before minutes of building.
    if let Some(target) = &options.push {
        push::Reference::parse(target, &out)?;
    }
    let digest = if options.control_plane {
        control_plane_image(options.binary.as_deref(), &out)?
    } else {
        filter_image(options.wasm.as_deref(), &out)?
    };
    if let Some(target) = &options.push {
        let pushed = push::push(&out, target)?;
        if pushed != digest {
            return Err(format!(
                "pushed manifest {pushed} is not the built {digest}"
            ));
        }
    }
    // The last line, for scripts and the tests: what a WasmPlugin's sha256 pins.
    println!("{digest}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_parse_and_mismatched_inputs_are_refused() {
        let options = parse(&args(&[
            "--control-plane",
            "--binary",
            "cp",
            "--out",
            "o",
            "--push",
            "127.0.0.1:5000/a:b",
        ]))
        .unwrap();
        assert!(options.control_plane);
        assert_eq!(options.binary, Some("cp".into()));
        assert_eq!(options.out, Some("o".into()));
        assert!(parse(&args(&["--control-plane", "--wasm", "f"])).is_err());
        assert!(parse(&args(&["--binary", "f"])).is_err());
        assert!(parse(&args(&["--wasm"]))
            .unwrap_err()
            .contains("needs a value"));
        assert!(parse(&args(&["--nope"])).unwrap_err().contains("unknown"));
    }

    #[test]
    fn only_a_wasm_module_is_packaged() {
        let err = filter_spec(b"\x7fELF".to_vec(), Path::new("x")).unwrap_err();
        assert!(err.contains("not a Wasm module"), "{err}");
        assert!(filter_spec(b"\0asm\x01\0\0\0".to_vec(), Path::new("x")).is_ok());
    }

    /// A minimal ELF64 header with one program header of type `kind`.
    fn elf(kind: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; 0x40 + 0x38];
        bytes[..6].copy_from_slice(b"\x7fELF\x02\x01");
        bytes[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        bytes[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        bytes[0x40..0x44].copy_from_slice(&kind.to_le_bytes());
        bytes
    }

    #[test]
    fn a_dynamically_linked_binary_is_refused() {
        assert!(check_static_elf(&elf(1), Path::new("static")).is_ok());
        let err = check_static_elf(&elf(3), Path::new("dynamic")).unwrap_err();
        assert!(err.contains("dynamically linked"), "{err}");
        assert!(check_static_elf(b"#!/bin/sh", Path::new("script")).is_err());
        // This test binary itself is dynamic (glibc).
        let me = std::env::current_exe().unwrap();
        assert!(check_static_elf(&std::fs::read(&me).unwrap(), &me).is_err());
    }

    #[test]
    fn the_control_plane_runs_as_nonroot_serving_on_8080_with_data_in_a_volume() {
        let run = control_plane_run_config();
        let spec = control_plane_spec(elf(1), Path::new("cp"), &run).unwrap();
        let image = Image::pack(&spec).unwrap();
        let config: serde_json::Value = serde_json::from_slice(&image.config.bytes).unwrap();
        assert_eq!(config["os"], "linux");
        let c = &config["config"];
        assert_eq!(c["User"], "65532:65532");
        assert_eq!(
            c["Entrypoint"],
            serde_json::json!(["/control-plane", "serve"])
        );
        assert_eq!(
            c["Env"],
            serde_json::json!([
                "CONTROL_PLANE_ADDR=0.0.0.0:8080",
                "CONTROL_PLANE_DATA_DIR=/data"
            ])
        );
        assert_eq!(c["ExposedPorts"], serde_json::json!({"8080/tcp": {}}));
        assert_eq!(c["Volumes"], serde_json::json!({"/data": {}}));
        assert_eq!(c["WorkingDir"], "/");
        assert!(config.get("created").is_none());
        // Same binary, same image.
        let again =
            Image::pack(&control_plane_spec(elf(1), Path::new("cp"), &run).unwrap()).unwrap();
        assert_eq!(again.manifest, image.manifest);
    }
}
