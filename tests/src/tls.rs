//! A certificate authority of the test's own, for the control plane over
//! HTTPS: the control plane serves a certificate it issued, Envoy and the
//! harness trust it, and a test can issue another (a renewal) or make a
//! second authority nobody trusts.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// The name the control plane's certificate is for: Envoy sends it as SNI
/// and checks it. The certificate also names 127.0.0.1, which the harness
/// dials, and the Service name the Kubernetes manifests check
/// ([`CONTROL_PLANE_SERVICE_NAME`]).
pub const CONTROL_PLANE_NAME: &str = "localhost";
/// The control plane's name in the Kubernetes manifests
/// (`envoy/istio/control-plane-tls.yaml`).
pub const CONTROL_PLANE_SERVICE_NAME: &str = "tollgate-control-plane.tollgate.svc";

pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a CA key");
        let pem = params.self_signed(&key).expect("the CA certificate").pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// The authority's certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A new leaf certificate for `names` (DNS names or IP addresses), and
    /// its key (PEM).
    pub fn issue(&self, names: &[&str]) -> (Certificate, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let params = CertificateParams::new(names).expect("leaf params");
        let key = KeyPair::generate().expect("a leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("a leaf");
        (cert, key.serialize_pem())
    }
}

/// The files a control plane serving HTTPS reads, and the CA that signed
/// them, in a test's directory.
pub struct ControlPlaneCertificate {
    pub ca: TestCa,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl ControlPlaneCertificate {
    pub fn new(dir: &Path) -> Self {
        let ca = TestCa::new("Tollgate test CA");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write the CA");
        let this = Self {
            ca,
            ca_file,
            cert_file: dir.join("control-plane.pem"),
            key_file: dir.join("control-plane.key"),
        };
        this.renew();
        this
    }

    /// Issues a new certificate for the control plane and writes it over
    /// the old one, certificate first, as a renewal does; returns the
    /// certificate, DER.
    pub fn renew(&self) -> Vec<u8> {
        let (cert, key) =
            self.ca
                .issue(&[CONTROL_PLANE_NAME, CONTROL_PLANE_SERVICE_NAME, "127.0.0.1"]);
        std::fs::write(&self.cert_file, cert.pem()).expect("write the certificate");
        std::fs::write(&self.key_file, key).expect("write the key");
        cert.der().to_vec()
    }
}
