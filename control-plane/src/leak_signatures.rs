//! Signed leak reports: GitHub's secret scanning sends its reports to a
//! partner's endpoint without a bearer token, signed instead. Each request
//! carries `Github-Public-Key-Identifier` (which key) and
//! `Github-Public-Key-Signature` (base64 of an ECDSA P-256 SHA-256
//! signature, DER, over the raw body). GitHub publishes its keys at
//! `https://api.github.com/meta/public_keys/secret_scanning` as
//! `{"public_keys": [{"key_identifier", "key" (PEM), "is_current"}]}`;
//! the control plane reads that document from a file
//! (`CONTROL_PLANE_LEAK_REPORT_KEYS_FILE`) at start, so no call leaves the
//! machine to check a report. A report whose signature verifies under one of
//! those keys is let in as a leak report, and opens nothing else.

use base64::Engine;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use serde::Deserialize;

/// The headers of a signed report (lower case, as `http` names them).
pub const KEY_ID_HEADER: &str = "github-public-key-identifier";
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";

/// The DER prefix of a P-256 public key in SubjectPublicKeyInfo form (the
/// algorithm and curve identifiers and the bit string's header): what a
/// `BEGIN PUBLIC KEY` PEM holds before the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const P256_POINT_BYTES: usize = 65;

#[derive(Deserialize)]
struct Document {
    public_keys: Vec<PublishedKey>,
}

#[derive(Deserialize)]
struct PublishedKey {
    key_identifier: String,
    key: String,
}

/// The keys signed reports are checked against: (identifier, P-256 point).
#[derive(Debug, Clone)]
pub struct VerificationKeys {
    keys: Vec<(String, Vec<u8>)>,
}

impl VerificationKeys {
    /// From GitHub's published document; every key must be a P-256 public key.
    pub fn from_document(text: &str) -> Result<Self, String> {
        let document: Document = serde_json::from_str(text)
            .map_err(|e| format!("not GitHub's public_keys document: {e}"))?;
        if document.public_keys.is_empty() {
            return Err("the document lists no public key".to_owned());
        }
        let keys = document
            .public_keys
            .into_iter()
            .map(|k| {
                let point = p256_point(&k.key)
                    .map_err(|why| format!("key {:?}: {why}", k.key_identifier))?;
                Ok((k.key_identifier, point))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { keys })
    }

    /// From the file at `path`.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "CONTROL_PLANE_LEAK_REPORT_KEYS_FILE {}: {e}",
                path.display()
            )
        })?;
        Self::from_document(&text).map_err(|why| {
            format!(
                "CONTROL_PLANE_LEAK_REPORT_KEYS_FILE {}: {why}",
                path.display()
            )
        })
    }

    /// Whether `signature` (base64 DER) is `key_id`'s over `body`; why not.
    pub fn verify(&self, key_id: &str, signature: &str, body: &[u8]) -> Result<(), &'static str> {
        let (_, point) = self
            .keys
            .iter()
            .find(|(id, _)| id == key_id)
            .ok_or("The report is signed with a key that is not configured.")?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(signature.trim())
            .map_err(|_| "The report's signature is not base64.")?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
            .verify(body, &signature)
            .map_err(|_| "The report's signature does not verify.")
    }
}

/// A P-256 point as a PEM `PUBLIC KEY`, the form GitHub publishes.
pub fn spki_pem(point: &[u8]) -> String {
    let mut der = P256_SPKI_PREFIX.to_vec();
    der.extend_from_slice(point);
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

/// The uncompressed point of a PEM `PUBLIC KEY` on P-256.
fn p256_point(pem: &str) -> Result<Vec<u8>, String> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| "not a PEM public key".to_owned())?;
    match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
        Some(point) if point.len() == P256_POINT_BYTES && point.first() == Some(&4) => {
            Ok(point.to_vec())
        }
        _ => Err("not an uncompressed P-256 public key".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

    /// A new key pair and GitHub's document publishing its public half as `id`.
    fn signer(id: &str) -> (EcdsaKeyPair, String) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let pem = spki_pem(pair.public_key().as_ref());
        let doc = serde_json::json!({"public_keys": [{"key_identifier": id, "key": pem, "is_current": true}]});
        (pair, doc.to_string())
    }

    fn sign(pair: &EcdsaKeyPair, body: &[u8]) -> String {
        let sig = pair.sign(&SystemRandom::new(), body).unwrap();
        base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
    }

    #[test]
    fn a_signature_verifies_for_its_key_and_body_only() {
        let (pair, doc) = signer("k1");
        let keys = VerificationKeys::from_document(&doc).unwrap();
        let body = br#"[{"token":"x","type":"t"}]"#;
        let sig = sign(&pair, body);
        assert_eq!(keys.verify("k1", &sig, body), Ok(()));
        assert!(keys.verify("k2", &sig, body).is_err());
        assert!(keys.verify("k1", &sig, b"[]").is_err());
        assert!(keys.verify("k1", "not base64!", body).is_err());
        let (other, _) = signer("k1");
        assert!(keys.verify("k1", &sign(&other, body), body).is_err());
    }

    #[test]
    fn documents_without_p256_keys_are_refused() {
        for bad in [
            "",
            "{}",
            r#"{"public_keys": []}"#,
            r#"{"public_keys": [{"key_identifier": "a", "key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"}]}"#,
        ] {
            assert!(VerificationKeys::from_document(bad).is_err(), "{bad}");
        }
    }
}
