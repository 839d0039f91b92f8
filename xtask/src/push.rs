//! `cargo xtask image --push <host:port>/<repo>:<tag>`: an OCI image layout
//! sent to a registry with the distribution API v2, over plain HTTP.
//!
//! Only loopback registries are spoken to: that is what the end-to-end tests
//! run, and it keeps TLS, credentials and token auth (which any real
//! registry wants) out of xtask. `skopeo copy oci:<dir> docker://…` does all
//! of those and reads the same layout.
//!
//! Blobs the registry already has are skipped (HEAD); the others are
//! uploaded monolithically (POST, then one PUT with `?digest=`); the manifest
//! goes last, under the tag, and the registry's `Docker-Content-Digest` must
//! equal the local digest, or what Istio would pin is not what was pushed.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use crate::oci::{Blob, Layout};
use crate::Result;

/// A parsed `<host:port>/<repo>:<tag>`.
#[derive(Debug, PartialEq, Eq)]
pub struct Reference {
    /// `host:port`, loopback only.
    pub registry: String,
    pub repository: String,
    pub tag: String,
}

fn skopeo_hint(dir: &Path, target: &str) -> String {
    format!(
        "for other registries, push the layout with `skopeo copy oci:{}:{} docker://{target}`",
        dir.display(),
        crate::oci::LAYOUT_REF_NAME
    )
}

/// Whether `host` (without port) is this machine's loopback.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || bare
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Repository path components, as the distribution spec allows them.
fn valid_repository(repo: &str) -> bool {
    !repo.is_empty()
        && repo.len() <= 255
        && repo.split('/').all(|part| {
            let bytes = part.as_bytes();
            let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
            !bytes.is_empty()
                && bytes.first().is_some_and(alnum)
                && bytes.last().is_some_and(alnum)
                && bytes
                    .iter()
                    .all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
        })
}

fn valid_tag(tag: &str) -> bool {
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    tag.len() <= 128
        && tag.as_bytes().first().is_some_and(word)
        && tag.bytes().all(|b| word(&b) || matches!(b, b'.' | b'-'))
}

impl Reference {
    /// Parses `target`; `layout` only makes the refusal's `skopeo` hint exact.
    pub fn parse(target: &str, layout: &Path) -> Result<Self> {
        let usage =
            "--push takes <host:port>/<repository>:<tag>, e.g. 127.0.0.1:5000/tollgate/filter:v1";
        if target.contains("://") {
            return Err(format!(
                "--push {target:?}: give no scheme; xtask pushes over plain HTTP to a loopback registry only; {}",
                skopeo_hint(layout, target.split("://").nth(1).unwrap_or(target))
            ));
        }
        let (registry, path) = target
            .split_once('/')
            .ok_or_else(|| format!("--push {target:?}: no registry host; {usage}"))?;
        let (host, port) = match registry.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (host, Some(port)),
            _ => (registry, None),
        };
        if !is_loopback(host) {
            return Err(format!(
                "--push {target:?}: xtask pushes over plain HTTP to a loopback registry only \
                 (no TLS, no credentials); {}",
                skopeo_hint(layout, target)
            ));
        }
        if port.and_then(|p| p.parse::<u16>().ok()).is_none() {
            return Err(format!(
                "--push {target:?}: {registry:?} needs a port; {usage}"
            ));
        }
        let (repository, tag) = path
            .rsplit_once(':')
            .ok_or_else(|| format!("--push {target:?}: name a tag; {usage}"))?;
        if !valid_repository(repository) {
            return Err(format!(
                "--push {target:?}: {repository:?} is not a repository name \
                 (lowercase letters, digits and . _ - between slashes)"
            ));
        }
        if !valid_tag(tag) {
            return Err(format!(
                "--push {target:?}: {tag:?} is not a tag (letters, digits, _ . -; at most 128)"
            ));
        }
        Ok(Self {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.to_owned(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/v2/{}/{path}", self.registry, self.repository)
    }
}

struct Client {
    agent: ureq::Agent,
    reference: Reference,
}

type Response = ureq::http::Response<ureq::Body>;

impl Client {
    fn new(reference: Reference) -> Self {
        let agent = ureq::Agent::config_builder()
            // 4xx and 5xx come back as responses, so their bodies can be shown.
            .http_status_as_error(false)
            // A loopback registry: never through an HTTP proxy from the environment.
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Self { agent, reference }
    }

    fn unreachable(&self, what: &str, e: ureq::Error) -> String {
        format!(
            "{what}: the registry at http://{} did not answer: {e}",
            self.reference.registry
        )
    }

    /// An error for an unexpected status, with the registry's body (its error JSON).
    fn refused(what: &str, mut response: Response) -> String {
        let status = response.status();
        let body = response
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        format!("{what}: the registry answered {status}: {}", body.trim())
    }

    fn header(response: &Response, name: &str) -> Option<String> {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// `GET /v2/`: a registry speaking the API is there.
    fn check_api(&self) -> Result {
        let what = "GET /v2/";
        let url = format!("http://{}/v2/", self.reference.registry);
        let response = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| self.unreachable(what, e))?;
        match response.status().as_u16() {
            200 => Ok(()),
            401 => Err(format!(
                "{what}: the registry at {url} wants authentication, which xtask does not do; \
                 push with skopeo instead"
            )),
            _ => Err(Self::refused(what, response)),
        }
    }

    /// Whether the repository already holds `digest` (HEAD answers 200).
    fn has_blob(&self, digest: &str) -> Result<bool> {
        let what = format!("HEAD blob {digest}");
        let response = self
            .agent
            .head(self.reference.url(&format!("blobs/{digest}")))
            .call()
            .map_err(|e| self.unreachable(&what, e))?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(Self::refused(&what, response)),
        }
    }

    /// Where the registry's `Location` points, which may be a path only.
    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("http://{}{location}", self.reference.registry)
        }
    }

    fn push_blob(&self, blob: &Blob) -> Result {
        if self.has_blob(&blob.digest)? {
            println!("  {} already there", blob.digest);
            return Ok(());
        }
        let what = format!("upload of blob {}", blob.digest);
        let started = self
            .agent
            .post(self.reference.url("blobs/uploads/"))
            .send_empty()
            .map_err(|e| self.unreachable(&what, e))?;
        if started.status().as_u16() != 202 {
            return Err(Self::refused(&what, started));
        }
        let location = Self::header(&started, "location")
            .ok_or_else(|| format!("{what}: the registry's 202 has no Location"))?;
        let location = self.absolute(&location);
        let separator = if location.contains('?') { '&' } else { '?' };
        let encoded = blob.digest.replace(':', "%3A");
        let done = self
            .agent
            .put(format!("{location}{separator}digest={encoded}"))
            .header("content-type", "application/octet-stream")
            .send(blob.bytes.as_slice())
            .map_err(|e| self.unreachable(&what, e))?;
        if done.status().as_u16() != 201 {
            return Err(Self::refused(&what, done));
        }
        if let Some(theirs) = Self::header(&done, "docker-content-digest") {
            if theirs != blob.digest {
                return Err(format!(
                    "{what}: the registry stored it as {theirs}, not {}",
                    blob.digest
                ));
            }
        }
        println!("  {} pushed ({} bytes)", blob.digest, blob.bytes.len());
        Ok(())
    }

    fn push_manifest(&self, manifest: &Blob) -> Result {
        let tag = &self.reference.tag;
        let what = format!("PUT manifest {}:{tag}", self.reference.repository);
        let response = self
            .agent
            .put(self.reference.url(&format!("manifests/{tag}")))
            .header("content-type", manifest.media_type)
            .send(manifest.bytes.as_slice())
            .map_err(|e| self.unreachable(&what, e))?;
        if response.status().as_u16() != 201 {
            return Err(Self::refused(&what, response));
        }
        match Self::header(&response, "docker-content-digest") {
            Some(theirs) if theirs == manifest.digest => Ok(()),
            Some(theirs) => Err(format!(
                "{what}: the registry's digest is {theirs}, not the local {}",
                manifest.digest
            )),
            None => Err(format!(
                "{what}: the registry's 201 has no Docker-Content-Digest to check {} against",
                manifest.digest
            )),
        }
    }
}

/// Pushes the single-image layout in `dir` to `target`; returns the manifest digest.
pub fn push(dir: &Path, target: &str) -> Result<String> {
    let reference = Reference::parse(target, dir)?;
    let layout = Layout::read(dir)?;
    let client = Client::new(reference);
    client.check_api()?;
    println!("pushing {} to {target}", dir.display());
    for blob in &layout.blobs {
        client.push_blob(blob)?;
    }
    client.push_manifest(&layout.manifest)?;
    println!("  {target} is {}", layout.manifest.digest);
    Ok(layout.manifest.digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(target: &str) -> Result<Reference> {
        Reference::parse(target, Path::new("target/oci/filter"))
    }

    #[test]
    fn a_loopback_reference_parses_into_registry_repository_and_tag() {
        assert_eq!(
            parse("127.0.0.1:5000/tollgate/filter:v1.2-rc_3").unwrap(),
            Reference {
                registry: "127.0.0.1:5000".into(),
                repository: "tollgate/filter".into(),
                tag: "v1.2-rc_3".into(),
            }
        );
        assert!(parse("localhost:5000/a:b").is_ok());
        assert!(parse("[::1]:5000/a:b").is_ok());
    }

    #[test]
    fn real_registries_and_https_are_sent_to_skopeo() {
        for target in [
            "ghcr.io/acme/tollgate:v1",
            "ghcr.io:443/acme/tollgate:v1",
            "https://127.0.0.1:5000/a:b",
            "10.0.0.1:5000/a:b",
        ] {
            let err = parse(target).unwrap_err();
            assert!(
                err.contains("skopeo copy oci:target/oci/filter:latest docker://"),
                "{target}: {err}"
            );
        }
    }

    #[test]
    fn malformed_references_say_what_is_wrong() {
        assert!(parse("127.0.0.1:5000/tollgate/filter")
            .unwrap_err()
            .contains("tag"));
        assert!(parse("127.0.0.1/a:b").unwrap_err().contains("port"));
        assert!(parse("127.0.0.1:5000/Upper:b")
            .unwrap_err()
            .contains("repository"));
        assert!(parse("127.0.0.1:5000/a:-b").unwrap_err().contains("tag"));
        assert!(parse("nothing").unwrap_err().contains("host"));
    }

    #[test]
    fn an_unreachable_registry_is_named_in_the_error() {
        // A port just released by the kernel: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let client = Client::new(parse(&format!("127.0.0.1:{port}/a:b")).unwrap());
        let err = client.check_api().unwrap_err();
        assert!(
            err.contains(&format!("http://127.0.0.1:{port} did not answer")),
            "{err}"
        );
    }
}
