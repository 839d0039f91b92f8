//! HTTPS serving: the sync token, usage and admin tokens must not cross a
//! network in clear, so the control plane can terminate TLS itself (rustls,
//! ring; no OpenSSL) instead of needing a proxy in front.
//!
//! The certificate and key are files (a cert-manager Secret, an ACME
//! client's output), so they are renewed by replacing the files: a watcher
//! reads both every second and, when either changed, loads the pair and
//! serves it to new connections. A pair that does not load (half written, a
//! key that does not match the certificate) is refused and logged, and the
//! old one stays, as a bad config does.
//!
//! TLS handshakes run on tasks of their own, so a client that connects and
//! says nothing cannot hold up everyone else's accept, and each has a time
//! limit.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How often the certificate and key files are read for a change.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once; past it, accepting waits for one to end.
const MAX_HANDSHAKES: usize = 256;

/// Where the serving certificate (PEM, leaf first, then intermediates) and
/// its private key (PEM, PKCS#8, PKCS#1 or SEC1) are.
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertificateFiles {
    /// Both flags or neither: one alone is a mistake, not plain HTTP.
    pub fn from_flags(cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Option<Self>, String> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(Self { cert, key })),
            (None, None) => Ok(None),
            (Some(_), None) => Err("CONTROL_PLANE_TLS_CERT_FILE is set without CONTROL_PLANE_TLS_KEY_FILE: set both to serve HTTPS, or neither".into()),
            (None, Some(_)) => Err("CONTROL_PLANE_TLS_KEY_FILE is set without CONTROL_PLANE_TLS_CERT_FILE: set both to serve HTTPS, or neither".into()),
        }
    }

    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), String> {
        let read = |path: &Path, what: &str| {
            std::fs::read(path)
                .map_err(|e| format!("cannot read the TLS {what} {}: {e}", path.display()))
        };
        Ok((read(&self.cert, "certificate")?, read(&self.key, "key")?))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain and key in `cert_pem` and `key_pem`, checked to
/// belong together.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate file is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the certificate file has no CERTIFICATE block".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("the key file has no private key: {e}"))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("the key file's key cannot sign: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    // Unlike CertifiedKey::from_der, a pair whose match cannot be checked is
    // refused too: it must provably match before it replaces one that works.
    certified
        .keys_match()
        .map_err(|e| format!("the key is not the certificate's: {e}"))?;
    Ok(certified)
}

/// What reading the files again found.
#[derive(Debug)]
pub enum Reload {
    /// The same bytes as last time.
    Unchanged,
    /// A new pair, loaded: serve it.
    Replaced(Arc<CertifiedKey>),
    /// New bytes that do not load: keep serving the old pair.
    Refused(String),
}

/// The files' bytes last considered, so that a pair is loaded (or refused,
/// and logged) once per change rather than once per second.
#[derive(Debug)]
pub struct Watch {
    seen: [u8; 32],
}

fn fingerprint(cert_pem: &[u8], key_pem: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update((cert_pem.len() as u64).to_be_bytes());
    hash.update(cert_pem);
    hash.update(key_pem);
    hash.finalize().into()
}

impl Watch {
    /// Watching from the pair loaded at start.
    pub fn new(cert_pem: &[u8], key_pem: &[u8]) -> Self {
        Self {
            seen: fingerprint(cert_pem, key_pem),
        }
    }

    pub fn consider(
        &mut self,
        cert_pem: &[u8],
        key_pem: &[u8],
        provider: &CryptoProvider,
    ) -> Reload {
        let now = fingerprint(cert_pem, key_pem);
        if now == self.seen {
            return Reload::Unchanged;
        }
        self.seen = now;
        match certified_key(cert_pem, key_pem, provider) {
            Ok(key) => Reload::Replaced(Arc::new(key)),
            Err(why) => Reload::Refused(why),
        }
    }
}

/// The pair new connections are served, replaced when the files change.
#[derive(Debug)]
pub struct ServingCertificate {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServingCertificate {
    pub fn new(key: CertifiedKey) -> Self {
        Self {
            current: RwLock::new(Arc::new(key)),
        }
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, key: Arc<CertifiedKey>) {
        match self.current.write() {
            Ok(mut current) => *current = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
    }
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Everything HTTPS serving needs, loaded at start: a pair that does not
/// load stops the start.
pub struct Https {
    files: CertificateFiles,
    certificate: Arc<ServingCertificate>,
    watch: Watch,
    config: Arc<ServerConfig>,
}

impl Https {
    pub fn load(files: CertificateFiles) -> Result<Self, String> {
        let (cert_pem, key_pem) = files.read()?;
        let provider = provider();
        let key = certified_key(&cert_pem, &key_pem, &provider).map_err(|e| {
            format!(
                "{e} (certificate {}, key {})",
                files.cert.display(),
                files.key.display()
            )
        })?;
        let certificate = Arc::new(ServingCertificate::new(key));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot configure TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        // The admin API and the feed speak HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            watch: Watch::new(&cert_pem, &key_pem),
            files,
            certificate,
            config: Arc::new(config),
        })
    }

    /// Accepts on `tcp`, handshakes, and hands axum the TLS streams; reloads
    /// the certificate while the listener lives.
    pub fn listen(self, tcp: TcpListener) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (handshaken, incoming) = mpsc::channel(64);
        tokio::spawn(reload(
            self.files,
            self.watch,
            self.certificate,
            handshaken.downgrade(),
        ));
        tokio::spawn(accept(tcp, TlsAcceptor::from(self.config), handshaken));
        Ok(TlsListener { incoming, local })
    }
}

/// Reads the files every second until the listener is gone.
async fn reload(
    files: CertificateFiles,
    mut watch: Watch,
    certificate: Arc<ServingCertificate>,
    alive: mpsc::WeakSender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let provider = provider();
    let mut unreadable = false;
    loop {
        tokio::time::sleep(RELOAD_EVERY).await;
        if alive.upgrade().is_none() {
            return;
        }
        let (cert_pem, key_pem) = match files.read() {
            Ok(pair) => {
                unreadable = false;
                pair
            }
            Err(why) => {
                // Once per outage: a file being replaced can be missing
                // for a moment.
                if !unreadable {
                    tracing::warn!(%why, "TLS certificate not reloaded; the current one stays");
                }
                unreadable = true;
                continue;
            }
        };
        match watch.consider(&cert_pem, &key_pem, &provider) {
            Reload::Unchanged => {}
            Reload::Replaced(key) => {
                certificate.replace(key);
                tracing::info!(
                    cert = %files.cert.display(),
                    "TLS certificate reloaded: new connections get the new one"
                );
            }
            Reload::Refused(why) => {
                tracing::error!(%why, "TLS certificate files changed but do not load; the current pair stays")
            }
        }
    }
}

async fn accept(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshaken: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            permit = in_flight.clone().acquire_owned() => permit,
            _ = handshaken.closed() => return,
        };
        let Ok(permit) = permit else { return };
        let (stream, peer) = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: give
                    // connections time to close rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = handshaken.closed() => return,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handshaken = handshaken.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    drop(permit);
                    let _ = handshaken.send((tls, peer)).await;
                }
                // Scanners and clients that do not trust the certificate:
                // nothing an operator must act on.
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// TLS connections, handshake done, for `axum::serve`.
pub struct TlsListener {
    incoming: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(connection) => connection,
            // The accept task ends only when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Checks the other replicas' certificates against one name, whatever
/// address a replica advertises: on Kubernetes that is its pod's IP, which
/// no certificate names, while every replica's certificate names the
/// Service.
#[derive(Debug)]
struct PeerName {
    chain: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for PeerName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.chain
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// The client a replica forwards reports to the allocating replica with.
/// `ca_pem`: CA certificates trusted besides the public roots. `peer_name`:
/// the name every replica's certificate must carry, checked instead of the
/// host of the URL dialled; it needs `ca_pem`, which is then the only trust.
pub fn peer_client(
    ca_pem: Option<&[u8]>,
    peer_name: Option<&str>,
) -> Result<reqwest::Client, String> {
    let roots = match ca_pem {
        None => Vec::new(),
        Some(pem) => {
            let roots = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("the peer CA file is not PEM: {e}"))?;
            if roots.is_empty() {
                return Err("the peer CA file has no CERTIFICATE block".into());
            }
            roots
        }
    };
    let builder = reqwest::Client::builder();
    let Some(name) = peer_name else {
        let mut builder = builder;
        for root in &roots {
            let root = reqwest::Certificate::from_der(root)
                .map_err(|e| format!("a peer CA certificate does not load: {e}"))?;
            builder = builder.add_root_certificate(root);
        }
        return builder
            .build()
            .map_err(|e| format!("cannot build the client for the other replicas: {e}"));
    };
    if roots.is_empty() {
        return Err("CONTROL_PLANE_TLS_PEER_NAME needs CONTROL_PLANE_TLS_PEER_CA_FILE: the CA that signed the replicas' certificates".into());
    }
    let name = ServerName::try_from(name.to_owned())
        .map_err(|_| format!("CONTROL_PLANE_TLS_PEER_NAME {name:?} is not a DNS name"))?;
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root)
            .map_err(|e| format!("a peer CA certificate does not load: {e}"))?;
    }
    let provider = provider();
    let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .build()
        .map_err(|e| format!("cannot check the replicas' certificates: {e}"))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot configure TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerName { chain, name }))
        .with_no_client_auth();
    builder
        .use_preconfigured_tls(config)
        .build()
        .map_err(|e| format!("cannot build the client for the other replicas: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `localhost`, and its key, in PEM.
    fn pair() -> (Vec<u8>, Vec<u8>) {
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (
            issued.cert.pem().into_bytes(),
            issued.signing_key.serialize_pem().into_bytes(),
        )
    }

    #[test]
    fn a_certificate_loads_only_with_its_own_key() {
        let provider = provider();
        let (cert, key) = pair();
        let (_, other_key) = pair();
        assert!(certified_key(&cert, &key, &provider).is_ok());
        let mismatch = certified_key(&cert, &other_key, &provider).unwrap_err();
        assert!(mismatch.contains("not the certificate's"), "{mismatch}");
        let no_cert = certified_key(b"", &key, &provider).unwrap_err();
        assert!(no_cert.contains("no CERTIFICATE"), "{no_cert}");
        let no_key = certified_key(&cert, b"-----BEGIN NOTHING-----\n", &provider).unwrap_err();
        assert!(no_key.contains("no private key"), "{no_key}");
        // The key where the certificate should be, and the other way round.
        assert!(certified_key(&key, &cert, &provider).is_err());
    }

    #[test]
    fn a_changed_pair_is_loaded_once_and_a_half_written_one_is_refused_until_complete() {
        let provider = provider();
        let (cert, key) = pair();
        let mut watch = Watch::new(&cert, &key);
        assert!(matches!(
            watch.consider(&cert, &key, &provider),
            Reload::Unchanged
        ));

        let (new_cert, new_key) = pair();
        // The certificate is replaced first; for a moment the key is the old one.
        match watch.consider(&new_cert, &key, &provider) {
            Reload::Refused(why) => assert!(why.contains("not the certificate's"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Refused once, not again every second while nothing changes.
        assert!(matches!(
            watch.consider(&new_cert, &key, &provider),
            Reload::Unchanged
        ));
        let Reload::Replaced(loaded) = watch.consider(&new_cert, &new_key, &provider) else {
            panic!("the complete pair is loaded");
        };
        let expected = CertificateDer::from_pem_slice(&new_cert).unwrap();
        assert_eq!(loaded.end_entity_cert().unwrap(), &expected);
        assert!(matches!(
            watch.consider(&new_cert, &new_key, &provider),
            Reload::Unchanged
        ));
        // Back to the first pair: a change like any other.
        assert!(matches!(
            watch.consider(&cert, &key, &provider),
            Reload::Replaced(_)
        ));
    }

    #[test]
    fn the_serving_certificate_is_whichever_was_loaded_last() {
        let provider = provider();
        let (cert, key) = pair();
        let (new_cert, new_key) = pair();
        let serving = ServingCertificate::new(certified_key(&cert, &key, &provider).unwrap());
        let first = serving.current();
        serving.replace(Arc::new(
            certified_key(&new_cert, &new_key, &provider).unwrap(),
        ));
        assert_ne!(
            first.end_entity_cert().unwrap(),
            serving.current().end_entity_cert().unwrap()
        );
        assert_eq!(
            serving.current().end_entity_cert().unwrap(),
            &CertificateDer::from_pem_slice(&new_cert).unwrap()
        );
    }

    /// A CA's certificate (PEM), and a leaf it issued for `names` with the
    /// leaf's key (PEM).
    fn issued_by_a_ca(names: &[&str]) -> (String, String, String) {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (ca_pem, leaf.pem(), key.serialize_pem())
    }

    #[tokio::test]
    async fn replicas_dialled_by_address_are_checked_for_the_peer_name() {
        let service = "tollgate-control-plane.tollgate.svc";
        let (ca, cert, key) = issued_by_a_ca(&[service]);
        let dir = std::env::temp_dir().join(format!("tollgate-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = CertificateFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        let https = Https::load(files).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/healthz", tcp.local_addr().unwrap());
        let listener = axum::serve::ListenerExt::tap_io(https.listen(tcp).unwrap(), |_| {});
        let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(listener, app).await });

        // The certificate names the Service, not 127.0.0.1: only the client
        // told the Service's name accepts it.
        let by_name = peer_client(Some(ca.as_bytes()), Some(service)).unwrap();
        let answer = by_name.get(&url).send().await.unwrap();
        assert_eq!(answer.text().await.unwrap(), "ok");
        let by_address = peer_client(Some(ca.as_bytes()), None).unwrap();
        assert!(by_address.get(&url).send().await.is_err());
        let other_name = peer_client(Some(ca.as_bytes()), Some("other.tollgate.svc")).unwrap();
        assert!(other_name.get(&url).send().await.is_err());
        // Another CA's client refuses it whatever the name.
        let (other_ca, _, _) = issued_by_a_ca(&[service]);
        let other_trust = peer_client(Some(other_ca.as_bytes()), Some(service)).unwrap();
        assert!(other_trust.get(&url).send().await.is_err());

        // A peer name with nothing to check it against, or that is no name.
        let err = peer_client(None, Some(service)).unwrap_err();
        assert!(
            err.contains("needs CONTROL_PLANE_TLS_PEER_CA_FILE"),
            "{err}"
        );
        let err = peer_client(Some(ca.as_bytes()), Some("not a name")).unwrap_err();
        assert!(err.contains("not a DNS name"), "{err}");
        assert!(peer_client(Some(b"nothing"), None).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn both_files_or_neither() {
        let cert = Some(PathBuf::from("cert.pem"));
        let key = Some(PathBuf::from("key.pem"));
        assert!(CertificateFiles::from_flags(None, None).unwrap().is_none());
        assert!(CertificateFiles::from_flags(cert.clone(), key.clone())
            .unwrap()
            .is_some());
        let err = CertificateFiles::from_flags(cert, None).unwrap_err();
        assert!(err.contains("without CONTROL_PLANE_TLS_KEY_FILE"), "{err}");
        let err = CertificateFiles::from_flags(None, key).unwrap_err();
        assert!(err.contains("without CONTROL_PLANE_TLS_CERT_FILE"), "{err}");
    }
}
