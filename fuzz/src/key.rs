//! `key`: the API key format, which every presented key goes through before
//! any lookup. Whatever a client sends, parsing must not panic, must accept
//! exactly the keys the control plane can issue (`from_body`), and a key it
//! accepts must show and hash the same however often it is asked: the hash
//! is the only thing the two sides compare.

use tollgate_core::key::{
    ApiKey, KeyHash, MalformedKey, BODY_LEN, DISPLAY_PREFIX_LEN, KEY_LEN, KEY_PREFIX,
};

/// Where the checksum starts: after the prefix, the body and `_`.
const CHECKSUM_AT: usize = KEY_PREFIX.len() + BODY_LEN + 1;

pub fn check(input: &[u8]) {
    // A header value as the filter gets it when it is UTF-8, and what the
    // bytes look like to code that replaced what is not.
    let lossy = String::from_utf8_lossy(input);
    presented(&lossy);
    issued(&lossy);
    // The control plane's body is the first BODY_LEN characters it drew.
    let body: String = lossy.chars().take(BODY_LEN).collect();
    issued(&body);
    hex_hash(&lossy);
}

/// A key as a client presents it.
fn presented(text: &str) {
    let key = match ApiKey::parse(text) {
        Ok(key) => key,
        Err(why) => {
            // The length is checked first, in bytes, then the prefix.
            assert_eq!(why == MalformedKey::WrongLength, text.len() != KEY_LEN);
            if why != MalformedKey::WrongLength {
                assert_eq!(
                    why == MalformedKey::WrongPrefix,
                    !text.starts_with(KEY_PREFIX)
                );
            }
            return;
        }
    };
    assert_eq!(key.expose(), text);
    assert_eq!(ApiKey::parse(key.expose()).as_ref(), Ok(&key));
    // Accepted means issuable: the body decides the rest of the key.
    let body = &text[KEY_PREFIX.len()..KEY_PREFIX.len() + BODY_LEN];
    assert_eq!(ApiKey::from_body(body).as_ref(), Ok(&key));
    stable(&key);
    typos_are_caught(&key);
}

/// A key as the control plane issues it from a random body.
fn issued(body: &str) {
    match ApiKey::from_body(body) {
        Ok(key) => {
            let text = key.expose();
            assert_eq!(text.len(), KEY_LEN);
            assert!(text.starts_with(KEY_PREFIX));
            assert_eq!(&text[KEY_PREFIX.len()..KEY_PREFIX.len() + BODY_LEN], body);
            assert_eq!(ApiKey::parse(text).as_ref(), Ok(&key));
            stable(&key);
        }
        Err(why) => {
            let issuable =
                body.len() == BODY_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric());
            assert!(!issuable, "{body:?} refused: {why}");
        }
    }
}

/// What both sides derive from a key, the same every time.
fn stable(key: &ApiKey) {
    let text = key.expose();
    assert_eq!(key.display_prefix(), &text[..DISPLAY_PREFIX_LEN]);
    let hash = key.hash();
    assert_eq!(hash, key.clone().hash());
    assert_eq!(hash, KeyHash::of(text.as_bytes()));
    let hex = hash.to_hex();
    assert_eq!(hex.len(), 64);
    assert_eq!(KeyHash::from_hex(&hex), Some(hash));
    assert_eq!(
        u32::from_str_radix(&hex[..8], 16).ok(),
        Some(hash.prefix_u32())
    );
    let id = hash.lookup_id();
    assert_eq!(id.len(), 16);
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    // Logs print keys with `{:?}`: the secret must not be in them.
    let shown = format!("{key:?} {hash:?}");
    assert!(!shown.contains(&text[KEY_PREFIX.len()..KEY_PREFIX.len() + BODY_LEN]));
}

/// A CRC-32 catches every one-character change of the body, and a changed
/// checksum is another string: any such typo is a bad checksum, never
/// another key.
fn typos_are_caught(key: &ApiKey) {
    let text = key.expose();
    for at in (KEY_PREFIX.len()..KEY_LEN).filter(|&at| at != CHECKSUM_AT - 1) {
        let mut typo = text.as_bytes().to_vec();
        typo[at] = if typo[at] == b'z' { b'0' } else { b'z' };
        let typo = String::from_utf8(typo).expect("ASCII stays ASCII");
        assert_eq!(ApiKey::parse(&typo), Err(MalformedKey::BadChecksum));
    }
}

/// A hash as the wire carries it: hex that decodes writes back lower-case.
fn hex_hash(text: &str) {
    if let Some(hash) = KeyHash::from_hex(text) {
        assert_eq!(hash.to_hex(), text.to_ascii_lowercase());
    }
}
