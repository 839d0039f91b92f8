//! The API key format and the one hash function used by the filter and the control plane.
//!
//! A key looks like `tg_<32 base62 chars>_<6 base62 chars>`: a fixed prefix so
//! secret scanners and humans recognise it, 190 bits of randomness, and a CRC-32
//! of everything before the last underscore so the filter can reject typos and
//! garbage before any lookup. Only the SHA-256 of the whole key is ever stored.
//!
//! NEVER CHANGE THE PREFIX OR THE CHECKSUM OF EXISTING KEYS: every issued key
//! would stop working.

use core::fmt;

use sha2::{Digest, Sha256};

/// Every key starts with this.
pub const KEY_PREFIX: &str = "tg_";
/// Length of the random part.
pub const BODY_LEN: usize = 32;
/// Length of the checksum part.
pub const CHECKSUM_LEN: usize = 6;
/// Total key length: `tg_` + body + `_` + checksum.
pub const KEY_LEN: usize = KEY_PREFIX.len() + BODY_LEN + 1 + CHECKSUM_LEN;
/// How many leading characters of a key are shown as its `prefix` (`tg_` + 8).
pub const DISPLAY_PREFIX_LEN: usize = KEY_PREFIX.len() + 8;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a presented key was rejected before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedKey {
    WrongLength,
    WrongPrefix,
    BadCharacter,
    BadChecksum,
}

impl fmt::Display for MalformedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::WrongLength => "the key has the wrong length",
            Self::WrongPrefix => "the key does not start with tg_",
            Self::BadCharacter => "the key contains characters that are not allowed",
            Self::BadChecksum => "the key's checksum does not match",
        })
    }
}

/// A well-formed plaintext key. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}…)", self.display_prefix())
    }
}

impl ApiKey {
    /// Builds a key from a random body of [`BODY_LEN`] base62 characters
    /// (the control plane supplies the randomness).
    pub fn from_body(body: &str) -> Result<Self, MalformedKey> {
        if body.len() != BODY_LEN {
            return Err(MalformedKey::WrongLength);
        }
        if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(MalformedKey::BadCharacter);
        }
        let mut key = String::with_capacity(KEY_LEN);
        key.push_str(KEY_PREFIX);
        key.push_str(body);
        let sum = checksum(key.as_bytes());
        key.push('_');
        key.extend(sum.iter().map(|&b| char::from(b)));
        Ok(Self(key))
    }

    /// Checks prefix, length, alphabet and checksum. Does no lookup.
    pub fn parse(presented: &str) -> Result<Self, MalformedKey> {
        Self::check(presented)?;
        Ok(Self(presented.to_owned()))
    }

    /// [`ApiKey::parse`]'s checks without keeping a copy of the key: a
    /// request needs only its hash ([`KeyHash::of`] its bytes), and the key
    /// stays where the request brought it.
    pub fn check(presented: &str) -> Result<(), MalformedKey> {
        if presented.len() != KEY_LEN {
            return Err(MalformedKey::WrongLength);
        }
        let Some(rest) = presented.strip_prefix(KEY_PREFIX) else {
            return Err(MalformedKey::WrongPrefix);
        };
        let Some((body, sum)) = rest.split_once('_') else {
            return Err(MalformedKey::BadCharacter);
        };
        if body.len() != BODY_LEN || sum.len() != CHECKSUM_LEN {
            return Err(MalformedKey::BadCharacter);
        }
        if !body
            .bytes()
            .chain(sum.bytes())
            .all(|b| b.is_ascii_alphanumeric())
        {
            return Err(MalformedKey::BadCharacter);
        }
        let signed = presented.get(..KEY_PREFIX.len() + BODY_LEN).unwrap_or("");
        if checksum(signed.as_bytes()) != sum.as_bytes() {
            return Err(MalformedKey::BadChecksum);
        }
        Ok(())
    }

    /// The plaintext, for the one response that shows it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `tg_` and the first 8 characters of the body: enough to recognise a key, useless to an attacker.
    pub fn display_prefix(&self) -> &str {
        self.0.get(..DISPLAY_PREFIX_LEN).unwrap_or("")
    }

    pub fn hash(&self) -> KeyHash {
        KeyHash::of(self.0.as_bytes())
    }
}

/// CRC-32 (IEEE) of `data`, written as 6 base62 digits.
fn checksum(data: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32(data);
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        // 62^6 > 2^32, so six digits always hold the whole value.
        *slot = BASE62.get((n % 62) as usize).copied().unwrap_or(b'0');
        n /= 62;
    }
    out
}

/// CRC-32 (IEEE) by table: it runs on every request, and the bitwise form
/// took a third of a microsecond for one key.
// Built at compile time, where `i < 256` bounds every index.
#[allow(clippy::indexing_slicing)]
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        let slot = usize::from((crc as u8) ^ byte);
        crc = (crc >> 8) ^ CRC_TABLE.get(slot).copied().unwrap_or(0);
    }
    !crc
}

/// SHA-256 of a plaintext key: the only form in which a key is stored or pushed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", self.lookup_id().get(..8).unwrap_or(""))
    }
}

impl KeyHash {
    pub fn of(plaintext: &[u8]) -> Self {
        Self(Sha256::digest(plaintext).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(Self(out))
    }

    /// The shared-data lookup id: base64url of the first 12 bytes, 16
    /// characters. 96 bits keep collisions out of reach (about 2^-57 at a
    /// million keys, 2^-50 at ten million), and the layout's 6-character
    /// prefix (`tg3/k/`) plus 16 is 22 bytes, the longest string Envoy's C++
    /// library keeps inline without a heap block: with a million keys, a
    /// longer name would cost a heap block per key.
    pub fn lookup_id(&self) -> String {
        let id = self.lookup_id_bytes();
        core::str::from_utf8(&id).unwrap_or_default().to_owned()
    }

    /// [`lookup_id`](Self::lookup_id) as bytes, without a heap block.
    pub fn lookup_id_bytes(&self) -> [u8; 16] {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = [b'A'; 16];
        let mut slots = out.iter_mut();
        for group in self.0.chunks_exact(3).take(4) {
            let n = group
                .iter()
                .fold(0u32, |n, &byte| (n << 8) | u32::from(byte));
            for shift in [18, 12, 6, 0] {
                let six = usize::try_from((n >> shift) & 63).unwrap_or(0);
                if let (Some(slot), Some(&c)) = (slots.next(), ALPHABET.get(six)) {
                    *slot = c;
                }
            }
        }
        out
    }

    /// The first four bytes, as a number.
    pub fn prefix_u32(&self) -> u32 {
        let [a, b, c, d, ..] = self.0;
        u32::from_be_bytes([a, b, c, d])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "AbCdEfGhIjKlMnOpQrStUvWxYz012345";

    #[test]
    fn issued_key_round_trips_through_parse() {
        let key = ApiKey::from_body(BODY).unwrap();
        assert_eq!(key.expose().len(), KEY_LEN);
        assert!(key.expose().starts_with("tg_AbCdEfGh"));
        assert_eq!(ApiKey::parse(key.expose()).unwrap(), key);
        assert_eq!(key.display_prefix(), "tg_AbCdEfGh");
    }

    #[test]
    fn crc32_matches_the_ieee_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn malformed_keys_are_rejected_by_kind() {
        let key = ApiKey::from_body(BODY).unwrap();
        let good = key.expose();
        assert_eq!(ApiKey::parse(""), Err(MalformedKey::WrongLength));
        assert_eq!(
            ApiKey::parse(&good[..good.len() - 1]),
            Err(MalformedKey::WrongLength)
        );
        assert_eq!(
            ApiKey::parse(&good.replacen("tg_", "tx_", 1)),
            Err(MalformedKey::WrongPrefix)
        );
        let mut flipped = good.as_bytes().to_vec();
        flipped[5] = if flipped[5] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            ApiKey::parse(core::str::from_utf8(&flipped).unwrap()),
            Err(MalformedKey::BadChecksum)
        );
        let mut bad = good.to_owned();
        bad.replace_range(4..5, "-");
        assert_eq!(ApiKey::parse(&bad), Err(MalformedKey::BadCharacter));
        let mut no_sep = good.to_owned();
        no_sep.replace_range(35..36, "x");
        assert_eq!(ApiKey::parse(&no_sep), Err(MalformedKey::BadCharacter));
        assert_eq!(
            ApiKey::from_body("short").unwrap_err(),
            MalformedKey::WrongLength
        );
    }

    #[test]
    fn hash_is_sha256_and_debug_is_redacted() {
        let h = KeyHash::of(b"abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        // base64url of ba7816bf8f01cfea414140de5dae22
        assert_eq!(h.lookup_id(), "ungWv48Bz-pBQUDe");
        assert_eq!(h.prefix_u32(), 0xba78_16bf);
        assert!(KeyHash::from_hex("zz").is_none());
        let key = ApiKey::from_body(BODY).unwrap();
        let shown = format!("{key:?} {:?}", key.hash());
        assert!(!shown.contains(BODY), "{shown}");
    }
}
