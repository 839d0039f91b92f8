//! Webhook signing secrets sealed at rest.
//!
//! API keys, tenant tokens and sessions are stored as SHA-256 digests: the
//! server only has to recognise them. A webhook's signing secret is
//! different: every alert is signed with it, so the server needs it back.
//! It is stored sealed with ChaCha20-Poly1305 under a key from the
//! environment (`CONTROL_PLANE_SECRETS_KEY`, 32 random bytes as 64 hex
//! digits), so a copy of the database (a backup, a replica's disk) does not
//! hold the secrets that sign the alerts tenants trust.
//!
//! A sealed value is `sealed:v1:<key id>:<nonce and ciphertext, hex>`, the
//! key id being the first 8 hex digits of the key's SHA-256, so that after
//! a rotation each value names the key that opens it. The tenant's id is
//! the associated data: a sealed secret copied to another tenant's row does
//! not open there.
//!
//! **Rotation**, in two rolls so that no replica meets a secret it cannot
//! open: first every replica gets the new key in
//! `CONTROL_PLANE_SECRETS_OLD_KEYS` (comma-separated), the old one still
//! current; then every replica gets the new key as
//! `CONTROL_PLANE_SECRETS_KEY` and the old one among the old keys, and at
//! start seals each secret again under the new key
//! (`store::webhooks::reseal`). Once every replica runs that way, the old
//! key can go. A control plane that holds a secret it
//! cannot open (its key in neither setting) refuses to start, naming the key
//! id, rather than fail every alert later.
//!
//! Without a key, secrets are stored in clear, as before this existed, and
//! a warning says so at start; values stored in clear are sealed at the
//! first start with a key.

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

const PREFIX: &str = "sealed:v1:";
const KEY_BYTES: usize = 32;

/// One key: what opens and seals, and its id.
struct SealingKey {
    id: String,
    key: LessSafeKey,
}

impl SealingKey {
    fn parse(hex_text: &str, setting: &str) -> Result<Self, String> {
        let bytes = hex::decode(hex_text.trim())
            .ok()
            .filter(|b| b.len() == KEY_BYTES)
            .ok_or_else(|| {
                format!(
                    "{setting} must be 64 hex digits (32 random bytes, e.g. from `openssl rand -hex 32`)"
                )
            })?;
        let id = hex::encode(&Sha256::digest(&bytes)[..4]);
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
            .map_err(|_| format!("{setting}: not a ChaCha20-Poly1305 key"))?;
        Ok(Self {
            id,
            key: LessSafeKey::new(key),
        })
    }
}

/// The keys secrets are sealed with (the current one) and opened with (it
/// and the old ones). `Debug` shows their ids only.
#[derive(Default)]
pub struct Sealer {
    current: Option<SealingKey>,
    old: Vec<SealingKey>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("current", &self.current.as_ref().map(|k| &k.id))
            .field("old", &self.old.iter().map(|k| &k.id).collect::<Vec<_>>())
            .finish()
    }
}

/// Why a stored secret does not open.
#[derive(Debug, PartialEq, Eq)]
pub enum SealError {
    /// Sealed under a key that is not configured: its id.
    UnknownKey(String),
    /// Not a sealed value this version writes, or altered, or another row's.
    Corrupt,
    /// The system's random source failed (no nonce).
    Random,
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKey(id) => write!(
                f,
                "sealed under key {id}, which is neither CONTROL_PLANE_SECRETS_KEY nor one of \
                 CONTROL_PLANE_SECRETS_OLD_KEYS"
            ),
            Self::Corrupt => f.write_str("the sealed value is damaged or belongs to another row"),
            Self::Random => f.write_str("the system's random source failed"),
        }
    }
}

impl std::error::Error for SealError {}

impl Sealer {
    /// From the settings' values: the current key (if any) and the old
    /// ones (comma-separated, blanks ignored).
    pub fn from_settings(current: Option<&str>, old: Option<&str>) -> Result<Self, String> {
        let current = current
            .filter(|k| !k.trim().is_empty())
            .map(|k| SealingKey::parse(k, "CONTROL_PLANE_SECRETS_KEY"))
            .transpose()?;
        let old = old
            .unwrap_or_default()
            .split(',')
            .filter(|k| !k.trim().is_empty())
            .map(|k| SealingKey::parse(k, "each of CONTROL_PLANE_SECRETS_OLD_KEYS"))
            .collect::<Result<Vec<_>, _>>()?;
        if current.is_none() && !old.is_empty() {
            return Err(
                "CONTROL_PLANE_SECRETS_OLD_KEYS needs CONTROL_PLANE_SECRETS_KEY: \
                        the key secrets are sealed with from now on"
                    .to_owned(),
            );
        }
        Ok(Self { current, old })
    }

    /// Whether new secrets are sealed (a key is configured).
    pub fn seals(&self) -> bool {
        self.current.is_some()
    }

    /// `secret` as stored for `owner` (the tenant's id): sealed under the
    /// current key, or as it is without one.
    pub fn seal(&self, secret: &str, owner: &str) -> Result<String, SealError> {
        let Some(current) = &self.current else {
            return Ok(secret.to_owned());
        };
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut sealed = secret.as_bytes().to_vec();
        current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(owner.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| SealError::Corrupt)?;
        Ok(format!(
            "{PREFIX}{}:{}{}",
            current.id,
            hex::encode(nonce),
            hex::encode(sealed)
        ))
    }

    /// The secret `stored` holds for `owner`; a value stored in clear is
    /// the secret itself.
    pub fn open(&self, stored: &str, owner: &str) -> Result<String, SealError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_owned());
        };
        let (id, body) = rest.split_once(':').ok_or(SealError::Corrupt)?;
        let key = self
            .current
            .iter()
            .chain(&self.old)
            .find(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey(id.to_owned()))?;
        let body = hex::decode(body).map_err(|_| SealError::Corrupt)?;
        if body.len() < NONCE_LEN {
            return Err(SealError::Corrupt);
        }
        let (nonce, sealed) = body.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Corrupt)?;
        let mut sealed = sealed.to_vec();
        let opened = key
            .key
            .open_in_place(nonce, Aad::from(owner.as_bytes()), &mut sealed)
            .map_err(|_| SealError::Corrupt)?;
        String::from_utf8(opened.to_vec()).map_err(|_| SealError::Corrupt)
    }

    /// Whether `stored` is as this sealer would store it now: sealed under
    /// the current key, or in clear when there is none.
    pub fn is_current(&self, stored: &str) -> bool {
        match (&self.current, stored.strip_prefix(PREFIX)) {
            (None, sealed) => sealed.is_none(),
            (Some(current), Some(rest)) => {
                rest.split_once(':').is_some_and(|(id, _)| id == current.id)
            }
            (Some(_), None) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "0101010101010101010101010101010101010101010101010101010101010101";
    const K2: &str = "0202020202020202020202020202020202020202020202020202020202020202";
    const SECRET: &str = "whsec_abcdefghijklmnopqrstuvwxyz0123456789ABCD";

    fn sealer(current: Option<&str>, old: Option<&str>) -> Sealer {
        Sealer::from_settings(current, old).unwrap()
    }

    #[test]
    fn sealed_secrets_open_for_their_owner_only() {
        let s = sealer(Some(K1), None);
        let stored = s.seal(SECRET, "ten_a").unwrap();
        assert!(stored.starts_with("sealed:v1:"), "{stored}");
        assert!(!stored.contains(SECRET) && !stored.contains(&hex::encode(SECRET)));
        assert_eq!(s.open(&stored, "ten_a").unwrap(), SECRET);
        assert_eq!(s.open(&stored, "ten_b"), Err(SealError::Corrupt));
        // A fresh nonce every time: the same secret never looks the same twice.
        assert_ne!(s.seal(SECRET, "ten_a").unwrap(), stored);
        assert!(s.is_current(&stored));
    }

    #[test]
    fn a_rotation_opens_with_the_old_key_and_reseals_with_the_new() {
        let before = sealer(Some(K1), None).seal(SECRET, "ten_a").unwrap();
        let rotating = sealer(Some(K2), Some(&format!(" {K1} ,")));
        assert_eq!(rotating.open(&before, "ten_a").unwrap(), SECRET);
        assert!(!rotating.is_current(&before));
        let after = rotating.seal(SECRET, "ten_a").unwrap();
        assert!(rotating.is_current(&after));
        // The old key dropped: what it sealed no longer opens, and says which key it needs.
        let id = before.split(':').nth(2).unwrap().to_owned();
        assert_eq!(
            sealer(Some(K2), None).open(&before, "ten_a"),
            Err(SealError::UnknownKey(id))
        );
        assert_eq!(
            sealer(Some(K2), None).open(&after, "ten_a").unwrap(),
            SECRET
        );
    }

    #[test]
    fn without_a_key_secrets_stay_in_clear_and_clear_ones_are_sealed_with_one() {
        let none = sealer(None, None);
        assert!(!none.seals());
        assert_eq!(none.seal(SECRET, "ten_a").unwrap(), SECRET);
        assert_eq!(none.open(SECRET, "ten_a").unwrap(), SECRET);
        assert!(none.is_current(SECRET));
        let sealed = sealer(Some(K1), None).seal(SECRET, "ten_a").unwrap();
        assert_eq!(
            none.open(&sealed, "ten_a").unwrap_err(),
            SealError::UnknownKey(sealed[10..18].to_owned())
        );
        assert!(!sealer(Some(K1), None).is_current(SECRET));
    }

    #[test]
    fn damaged_values_and_bad_keys_are_refused() {
        let s = sealer(Some(K1), None);
        let stored = s.seal(SECRET, "ten_a").unwrap();
        let mut flipped = stored.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        for bad in [
            flipped.as_str(),
            "sealed:v1:",
            "sealed:v1:abcd",
            &stored[..40],
        ] {
            assert!(s.open(bad, "ten_a").is_err(), "{bad}");
        }
        for key in ["", "00", &K1[..63], &format!("{K1}00"), &"zz".repeat(32)] {
            if key.is_empty() {
                assert!(!sealer(Some(key), None).seals());
                continue;
            }
            let refused = Sealer::from_settings(Some(key), None).unwrap_err();
            assert!(refused.contains("64 hex digits"), "{refused}");
        }
        assert!(Sealer::from_settings(None, Some(K1)).is_err());
        assert!(!format!("{s:?}").contains(K1));
    }
}
