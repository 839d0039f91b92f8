//! A loopback OCI registry (Debian's `docker-registry`) for one test, and a
//! puller that fetches a Wasm module from it the way Istio's agent does.
//!
//! The registry is the binary named by `TOLLGATE_DOCKER_REGISTRY` (which
//! `cargo xtask test` installs), on a free port of 127.0.0.1 with its storage
//! in a temporary directory, killed by pid when the [`Registry`] drops.
//!
//! [`pull_wasm`] is written from Istio's `pkg/wasm/imagefetcher.go`, not from
//! xtask's pusher, so a test that pushes with one and pulls with the other
//! checks the image against what Istio accepts rather than against itself:
//! the manifest fetched by tag must have the digest the `WasmPlugin` pins,
//! and be one of the three layouts Istio knows (a Docker image or an OCI
//! "compat" image whose last layer is a tar.gz holding `plugin.wasm`, or a
//! two-layer Wasm artifact holding the raw module); the module must be a
//! Wasm binary of at most 256 MiB.

use std::io::Read;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

use tollgate_launch::Process;

use crate::harness::{free_port, spawn, until_ready};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const WASM_CONTENT_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
pub const WASM_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";

/// Istio's cap on a module, compressed or not.
pub const MAX_MODULE_BYTES: u64 = 256 << 20;
/// The file Istio looks for in an image's last layer.
const PLUGIN_WASM: &str = "plugin.wasm";

/// A running `docker-registry`; dropping it kills it.
pub struct Registry {
    /// `127.0.0.1:<port>`, what image references start with.
    pub addr: String,
    dir: tempfile::TempDir,
    process: Option<Process>,
}

impl Registry {
    /// Starts a registry with empty storage and waits until `GET /v2/` answers 200.
    pub async fn start() -> Self {
        let binary = PathBuf::from(std::env::var("TOLLGATE_DOCKER_REGISTRY").unwrap_or_else(
            |_| {
                panic!(
                    "TOLLGATE_DOCKER_REGISTRY is not set: run the end-to-end tests through \
                     `cargo xtask test`, or point it at Debian's /usr/bin/docker-registry"
                )
            },
        ));
        assert!(
            binary.is_file(),
            "TOLLGATE_DOCKER_REGISTRY={} does not exist",
            binary.display()
        );
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            [
                "version: 0.1",
                "log:",
                "  level: info",
                "storage:",
                "  filesystem:",
                &format!(
                    "    rootdirectory: {}",
                    dir.path().join("storage").display()
                ),
                "  delete:",
                "    enabled: true",
                // No background sweep of unfinished uploads during a test.
                "  maintenance:",
                "    uploadpurging:",
                "      enabled: false",
                "http:",
                &format!("  addr: {addr}"),
                // Only signs upload state; a fixed one keeps the log quiet.
                "  secret: tollgate-e2e-only",
                "",
            ]
            .join("\n"),
        )
        .expect("write the registry's config");
        let mut command = Command::new(&binary);
        command.arg("serve").arg(&config);
        let process = spawn("docker-registry", command, dir.path().join("registry.log"));
        let process = until_ready(process, port, "/v2/").await;
        Self {
            addr,
            dir,
            process: Some(process),
        }
    }

    /// The registry's log, for failure messages.
    pub fn logs(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- registry.log ---\n{}\n",
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if let Some(process) = self.process.take() {
            process.stop();
        }
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// One blob a manifest names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// Which of Istio's layouts a manifest is, and the blob holding the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleLayer {
    /// A Docker v2 image: the last layer, a tar.gz with `plugin.wasm`.
    DockerImage(Descriptor),
    /// An OCI image ("compat"): the last layer, a tar.gz with `plugin.wasm`.
    CompatImage(Descriptor),
    /// A Wasm artifact: the raw module, one of exactly two layers.
    Artifact(Descriptor),
}

fn descriptor(value: &serde_json::Value) -> Result<Descriptor, String> {
    let field = |name: &str| {
        value
            .get(name)
            .ok_or_else(|| format!("a layer descriptor without {name}: {value}"))
    };
    Ok(Descriptor {
        media_type: field("mediaType")?
            .as_str()
            .ok_or("a layer's mediaType is not a string")?
            .to_owned(),
        digest: field("digest")?
            .as_str()
            .ok_or("a layer's digest is not a string")?
            .to_owned(),
        size: field("size")?
            .as_u64()
            .ok_or("a layer's size is not a number")?,
    })
}

/// Finds the module's blob in a manifest the way Istio does; `content_type`
/// is the registry's, used when the manifest does not name its own type.
pub fn module_layer(manifest: &[u8], content_type: Option<&str>) -> Result<ModuleLayer, String> {
    let value: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|e| format!("the manifest is not JSON: {e}"))?;
    let media_type = value
        .get("mediaType")
        .and_then(|m| m.as_str())
        .or(content_type)
        .unwrap_or_default();
    let layers = value
        .get("layers")
        .and_then(|l| l.as_array())
        .map(|layers| layers.iter().map(descriptor).collect::<Result<Vec<_>, _>>())
        .transpose()?
        .unwrap_or_default();
    let last_layer_of = |wanted: &str| match layers.last() {
        Some(last) if last.media_type == wanted => Ok(last.clone()),
        Some(last) => Err(format!(
            "its last layer is {}, not {wanted}",
            last.media_type
        )),
        None => Err("it has no layers".to_owned()),
    };
    match media_type {
        DOCKER_MANIFEST => last_layer_of(DOCKER_LAYER_TAR_GZIP)
            .map(ModuleLayer::DockerImage)
            .map_err(|e| format!("a Docker image Istio cannot load: {e}")),
        OCI_MANIFEST => {
            // Istio tries the artifact layout first: exactly two layers, one
            // of them the module (it does not look at the other).
            let artifact = if layers.len() == 2 {
                layers
                    .iter()
                    .find(|l| l.media_type == WASM_CONTENT_LAYER)
                    .cloned()
                    .ok_or_else(|| format!("neither of its two layers is {WASM_CONTENT_LAYER}"))
            } else {
                Err(format!(
                    "a Wasm artifact has exactly 2 layers, this has {}",
                    layers.len()
                ))
            };
            match artifact {
                Ok(layer) => Ok(ModuleLayer::Artifact(layer)),
                Err(not_artifact) => last_layer_of(OCI_LAYER_TAR_GZIP)
                    .map(ModuleLayer::CompatImage)
                    .map_err(|not_image| {
                        format!(
                            "an OCI manifest Istio cannot load: not an artifact ({not_artifact}) \
                             and not an image ({not_image})"
                        )
                    }),
            }
        }
        other => Err(format!(
            "manifest media type {other:?} is none Istio loads a module from \
             ({OCI_MANIFEST} or {DOCKER_MANIFEST})"
        )),
    }
}

/// `plugin.wasm` from a gzipped tar, anywhere in it (Istio matches the base name).
pub fn plugin_wasm_from_tar_gzip(layer: &[u8]) -> Result<Vec<u8>, String> {
    let gunzipped = flate2::read::GzDecoder::new(layer).take(MAX_MODULE_BYTES * 2);
    let mut archive = tar::Archive::new(gunzipped);
    let entries = archive
        .entries()
        .map_err(|e| format!("the layer is not a tar.gz: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("the layer's tar is broken: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("a tar entry's name: {e}"))?
            .into_owned();
        if path.file_name().and_then(|n| n.to_str()) != Some(PLUGIN_WASM) {
            continue;
        }
        let size = entry.header().size().map_err(|e| format!("{e}"))?;
        if size > MAX_MODULE_BYTES {
            return Err(format!("{} is {size} bytes, over 256 MiB", path.display()));
        }
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        return Ok(bytes);
    }
    Err(format!("no {PLUGIN_WASM} in the layer"))
}

/// Pulls `<registry>/<repo>:<tag>` over plain HTTP, as Istio's agent pulls
/// an `oci://` `WasmPlugin` whose `sha256` is `expected_manifest_digest`;
/// returns the module's bytes.
pub async fn pull_wasm(
    registry: &str,
    repo: &str,
    tag: &str,
    expected_manifest_digest: &str,
) -> Result<Vec<u8>, String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| format!("an HTTP client: {e}"))?;
    let base = format!("http://{registry}/v2/{repo}");
    let manifest_url = format!("{base}/manifests/{tag}");
    let response = client
        .get(&manifest_url)
        .header(
            reqwest::header::ACCEPT,
            format!("{OCI_MANIFEST}, {DOCKER_MANIFEST}"),
        )
        .send()
        .await
        .map_err(|e| format!("GET {manifest_url}: {e}"))?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let manifest = response
        .bytes()
        .await
        .map_err(|e| format!("GET {manifest_url}: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "GET {manifest_url}: {status}: {}",
            String::from_utf8_lossy(&manifest)
        ));
    }
    let got = digest(&manifest);
    if got != expected_manifest_digest {
        return Err(format!(
            "{repo}:{tag} has manifest digest {got}, not the pinned {expected_manifest_digest}"
        ));
    }
    let layer = module_layer(&manifest, content_type.as_deref())
        .map_err(|e| format!("{repo}:{tag}: {e}"))?;
    let descriptor = match &layer {
        ModuleLayer::DockerImage(d) | ModuleLayer::CompatImage(d) | ModuleLayer::Artifact(d) => d,
    };
    if descriptor.size > MAX_MODULE_BYTES {
        return Err(format!(
            "{repo}:{tag}: its module layer is {} bytes, over 256 MiB",
            descriptor.size
        ));
    }
    let blob_url = format!("{base}/blobs/{}", descriptor.digest);
    let response = client
        .get(&blob_url)
        .send()
        .await
        .map_err(|e| format!("GET {blob_url}: {e}"))?;
    let status = response.status();
    let blob = response
        .bytes()
        .await
        .map_err(|e| format!("GET {blob_url}: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "GET {blob_url}: {status}: {}",
            String::from_utf8_lossy(&blob)
        ));
    }
    if digest(&blob) != descriptor.digest || blob.len() as u64 != descriptor.size {
        return Err(format!(
            "{blob_url}: {} bytes with digest {}, not the manifest's {} bytes",
            blob.len(),
            digest(&blob),
            descriptor.size
        ));
    }
    let module = match layer {
        ModuleLayer::DockerImage(_) | ModuleLayer::CompatImage(_) => {
            plugin_wasm_from_tar_gzip(&blob)?
        }
        ModuleLayer::Artifact(_) => blob.to_vec(),
    };
    if !module.starts_with(b"\0asm") {
        return Err(format!(
            "{repo}:{tag}: the module is not Wasm (no \\0asm magic)"
        ));
    }
    Ok(module)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn layer(media_type: &str) -> serde_json::Value {
        json!({"mediaType": media_type, "digest": format!("sha256:{}", "0".repeat(64)), "size": 10})
    }

    fn manifest(media_type: &str, layers: &[&str]) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": layer("application/vnd.oci.image.config.v1+json"),
            "layers": layers.iter().map(|m| layer(m)).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn the_three_layouts_istio_loads_are_recognised() {
        assert!(matches!(
            module_layer(&manifest(DOCKER_MANIFEST, &[DOCKER_LAYER_TAR_GZIP]), None),
            Ok(ModuleLayer::DockerImage(_))
        ));
        assert!(matches!(
            module_layer(
                &manifest(OCI_MANIFEST, &[OCI_LAYER_TAR_GZIP, OCI_LAYER_TAR_GZIP]),
                None
            ),
            Ok(ModuleLayer::CompatImage(_))
        ));
        assert!(matches!(
            module_layer(
                &manifest(OCI_MANIFEST, &[WASM_CONFIG, WASM_CONTENT_LAYER]),
                None
            ),
            Ok(ModuleLayer::Artifact(_))
        ));
    }

    #[test]
    fn a_one_layer_artifact_and_other_shapes_are_refused() {
        let err = module_layer(&manifest(OCI_MANIFEST, &[WASM_CONTENT_LAYER]), None).unwrap_err();
        assert!(err.contains("exactly 2 layers"), "{err}");
        let err =
            module_layer(&manifest(DOCKER_MANIFEST, &[OCI_LAYER_TAR_GZIP]), None).unwrap_err();
        assert!(err.contains("last layer"), "{err}");
        assert!(module_layer(&manifest(OCI_MANIFEST, &[]), None).is_err());
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [],
        }))
        .unwrap();
        assert!(module_layer(&index, None)
            .unwrap_err()
            .contains("none Istio loads"));
    }

    #[test]
    fn an_oci_manifest_without_a_media_type_is_read_by_its_content_type() {
        let mut value: serde_json::Value =
            serde_json::from_slice(&manifest(OCI_MANIFEST, &[OCI_LAYER_TAR_GZIP])).unwrap();
        value.as_object_mut().unwrap().remove("mediaType");
        let bytes = serde_json::to_vec(&value).unwrap();
        assert!(module_layer(&bytes, Some(OCI_MANIFEST)).is_ok());
        assert!(module_layer(&bytes, None).is_err());
    }
}
