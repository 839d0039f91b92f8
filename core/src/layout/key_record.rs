//! The key record under `tg3/k/`: a compact binary codec, because with a
//! million keys the bytes per key are what Envoy's memory is made of.
//!
//! Ids as the control plane makes them (`key_` and 20 base-62 digits) are
//! packed into 15 bytes; anything else is kept as text, so the codec never
//! refuses an id the control plane accepted.

use std::sync::Arc;

use crate::config::{InvalidConfig, KeyIds, KeyRecord};
use crate::json::{self, Field, Fields, FromJson, Object, Reader, ToJson};
use crate::key::KeyHash;
use crate::store::SharedStore;
use crate::wire::{WireKey, WireLimit, WireScope};

use super::key_record_key;

/// The record's format. Records of the formats before it (2: ids as text)
/// lived under the unversioned names, which this layout never reads.
const KEY_FORMAT: u8 = 3;
const KEY_ACTIVE: u8 = 1;
const KEY_EXPIRES: u8 = 2;
const KEY_QUOTA: u8 = 4;
const KEY_ANCHOR: u8 = 8;
const KEY_EXTRAS: u8 = 16;
/// The id, tenant and plan, in this order, with the flag telling that the
/// field is packed ([`pack_id`]) and the kind the control plane gives it.
const KEY_ID_FIELDS: [(u8, &str); 3] = [(32, "key_"), (64, "tnt_"), (128, "plan_")];

/// The rarely set parts of a key record, kept as JSON after the binary head.
/// Unknown fields are skipped, not refused: serde read it without
/// `deny_unknown_fields`, and records in shared data outlive filters.
#[derive(Default)]
#[cfg_attr(test, derive(Debug, PartialEq, serde::Serialize, serde::Deserialize))]
pub(super) struct KeyExtras {
    #[cfg_attr(test, serde(default, skip_serializing_if = "Option::is_none"))]
    pub(super) scopes: Option<Vec<WireScope>>,
    #[cfg_attr(test, serde(default, skip_serializing_if = "Option::is_none"))]
    pub(super) allowed_cidrs: Option<Vec<String>>,
    #[cfg_attr(test, serde(default, skip_serializing_if = "Option::is_none"))]
    pub(super) limits: Option<Vec<WireLimit>>,
}

const EXTRAS_FIELDS: Fields = Fields::open(&[
    Field::optional("scopes"),
    Field::optional("allowed_cidrs"),
    Field::optional("limits"),
]);

impl FromJson for KeyExtras {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, json::Error> {
        let mut v = KeyExtras::default();
        reader.object(&EXTRAS_FIELDS, &mut |r, field| match field {
            0 => r.set(&mut v.scopes),
            1 => r.set(&mut v.allowed_cidrs),
            2 => r.set(&mut v.limits),
            _ => Ok(()),
        })?;
        Ok(v)
    }
}

impl ToJson for KeyExtras {
    fn write_json(&self, out: &mut String) {
        Object::new(out)
            .option("scopes", &self.scopes)
            .option("allowed_cidrs", &self.allowed_cidrs)
            .option("limits", &self.limits)
            .end();
    }
}

/// A key record as stored under `k/`: a format byte, flags, then the id,
/// tenant and plan, each either packed into 15 bytes or as text after a
/// length byte, then the optional expiry and quota (u64 little-endian) and
/// billing anchor day, then, only if the key has scopes, CIDRs or limits of
/// its own, those as JSON. The hash is the entry's name, so it is not stored
/// again.
///
/// A plain key is 47 bytes, where the ids as text made it 78: Envoy keeps
/// each value in its own allocation, and with a million keys that
/// allocation is a third of what Envoy's memory grows by.
pub fn encode_key_record(wire: &WireKey) -> Result<Vec<u8>, InvalidConfig> {
    let extras = KeyExtras {
        scopes: wire.scopes.clone(),
        allowed_cidrs: wire.allowed_cidrs.clone(),
        limits: wire.limits.clone(),
    };
    let has_extras =
        extras.scopes.is_some() || extras.allowed_cidrs.is_some() || extras.limits.is_some();
    let flag = |on: bool, bit: u8| if on { bit } else { 0 };
    let mut flags = flag(wire.active, KEY_ACTIVE)
        | flag(wire.expires_at_ms.is_some(), KEY_EXPIRES)
        | flag(wire.monthly_quota.is_some(), KEY_QUOTA)
        | flag(wire.billing_anchor_day.is_some(), KEY_ANCHOR)
        | flag(has_extras, KEY_EXTRAS);
    let mut out = Vec::with_capacity(48);
    out.extend_from_slice(&[KEY_FORMAT, 0]);
    let texts = [
        ("id", &wire.id),
        ("tenant_id", &wire.tenant_id),
        ("plan_id", &wire.plan_id),
    ];
    for ((field, text), (bit, kind)) in texts.into_iter().zip(KEY_ID_FIELDS) {
        if let Some(packed) = pack_id(text, kind) {
            flags |= bit;
            out.extend_from_slice(&packed);
            continue;
        }
        let len = u8::try_from(text.len()).map_err(|_| {
            InvalidConfig(format!("key {}: {field} is longer than 255 bytes", wire.id))
        })?;
        out.push(len);
        out.extend_from_slice(text.as_bytes());
    }
    if let Some(slot) = out.get_mut(1) {
        *slot = flags;
    }
    for number in [wire.expires_at_ms, wire.monthly_quota]
        .into_iter()
        .flatten()
    {
        out.extend_from_slice(&number.to_le_bytes());
    }
    out.extend(wire.billing_anchor_day);
    if has_extras {
        out.extend_from_slice(&json::to_vec(&extras));
    }
    Ok(out)
}

/// Reads what [`encode_key_record`] wrote as the record of `hash`; `None`
/// if it is not such a record or not a valid one.
pub fn decode_key_record(bytes: &[u8], hash: &KeyHash) -> Option<KeyRecord> {
    let (&[format, flags], mut rest) = bytes.split_first_chunk::<2>()?;
    if format != KEY_FORMAT {
        return None;
    }
    let mut unpacked = [0u8; UNPACKED_ID_LEN];
    let [id, tenant, plan] = KEY_ID_FIELDS;
    let id: Arc<str> = next_id(&mut rest, flags, id, &mut unpacked)?.into();
    let tenant_id: Arc<str> = next_id(&mut rest, flags, tenant, &mut unpacked)?.into();
    let plan_id = next_id(&mut rest, flags, plan, &mut unpacked)?.to_owned();
    let mut number = |bit: u8| -> Option<Option<u64>> {
        if flags & bit == 0 {
            return Some(None);
        }
        let (value, tail) = rest.split_first_chunk::<8>()?;
        rest = tail;
        Some(Some(u64::from_le_bytes(*value)))
    };
    let expires_at_ms = number(KEY_EXPIRES)?;
    let monthly_quota = number(KEY_QUOTA)?;
    let billing_anchor_day = if flags & KEY_ANCHOR == 0 {
        None
    } else {
        let (&day, tail) = rest.split_first()?;
        rest = tail;
        Some(day)
    };
    let extras: KeyExtras = if flags & KEY_EXTRAS == 0 {
        if !rest.is_empty() {
            return None;
        }
        KeyExtras::default()
    } else {
        json::from_slice(rest).ok()?
    };
    // The ids go into the record as they are; these stay empty.
    let wire = WireKey {
        active: flags & KEY_ACTIVE != 0,
        expires_at_ms,
        scopes: extras.scopes,
        allowed_cidrs: extras.allowed_cidrs,
        limits: extras.limits,
        monthly_quota,
        billing_anchor_day,
        ..WireKey::default()
    };
    let ids = KeyIds {
        id,
        tenant_id,
        plan_id,
    };
    KeyRecord::with_ids(ids, &wire, *hash).ok()
}

/// The next of a record's ids, of `kind`: packed, if `bit` is set in
/// `flags` (unpacked into `unpacked`), else its text. Borrowed, so that
/// each is copied once, into the record.
fn next_id<'r: 'o, 'o>(
    rest: &mut &'r [u8],
    flags: u8,
    (bit, kind): (u8, &str),
    unpacked: &'o mut [u8; UNPACKED_ID_LEN],
) -> Option<&'o str> {
    if flags & bit != 0 {
        let (packed, tail) = rest.split_first_chunk::<PACKED_ID_LEN>()?;
        *rest = tail;
        return unpack_id(packed, kind, unpacked);
    }
    let (&len, tail) = rest.split_first()?;
    let (value, tail) = tail.split_at_checked(usize::from(len))?;
    *rest = tail;
    core::str::from_utf8(value).ok()
}

/// The record of `hash` as the last sync wrote it; `None` if there is none
/// or it does not read.
pub fn read_key(store: &impl SharedStore, hash: &KeyHash) -> Option<KeyRecord> {
    let (bytes, _) = store.get(&key_record_key(hash))?;
    decode_key_record(&bytes, hash)
}

/// The ids the control plane makes are a kind and 20 alphanumerics
/// (`key_4fZ...`): two halves of ten base-62 digits, each below 2^60.
const ID_DIGITS: usize = 20;
const PACKED_ID_LEN: usize = 15;
/// The longest kind (`plan_`) and its digits.
const UNPACKED_ID_LEN: usize = 5 + ID_DIGITS;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// 62^10: one half's digits as a number are below this.
const HALF_LIMIT: u64 = 839_299_365_868_340_224;
const HALF_BITS: u32 = 60;

/// `id` in 15 bytes, if it is `kind` and 20 alphanumerics.
fn pack_id(id: &str, kind: &str) -> Option<[u8; PACKED_ID_LEN]> {
    let digits = id.strip_prefix(kind)?.as_bytes();
    if digits.len() != ID_DIGITS {
        return None;
    }
    let half = |digits: &[u8]| {
        digits.iter().try_fold(0u64, |n, &b| {
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'A'..=b'Z' => b - b'A' + 10,
                b'a'..=b'z' => b - b'a' + 36,
                _ => return None,
            };
            Some(n * 62 + u64::from(d))
        })
    };
    let (high, low) = digits.split_at(ID_DIGITS / 2);
    let n = (u128::from(half(high)?) << HALF_BITS) | u128::from(half(low)?);
    n.to_le_bytes().first_chunk().copied()
}

/// What [`pack_id`] packed; `None` for bytes it cannot have written.
fn unpack_id<'o>(
    packed: &[u8; PACKED_ID_LEN],
    kind: &str,
    out: &'o mut [u8; UNPACKED_ID_LEN],
) -> Option<&'o str> {
    let mut wide = [0u8; 16];
    for (to, from) in wide.iter_mut().zip(packed) {
        *to = *from;
    }
    let n = u128::from_le_bytes(wide);
    let high = u64::try_from(n >> HALF_BITS).ok()?;
    let low = u64::try_from(n & ((1 << HALF_BITS) - 1)).ok()?;
    if high >= HALF_LIMIT || low >= HALF_LIMIT {
        return None;
    }
    let mut digits = [0u8; ID_DIGITS];
    let (high_digits, low_digits) = digits.split_at_mut(ID_DIGITS / 2);
    for (mut n, out) in [(high, high_digits), (low, low_digits)] {
        for slot in out.iter_mut().rev() {
            *slot = *BASE62.get(usize::try_from(n % 62).ok()?)?;
            n /= 62;
        }
    }
    let id = out.get_mut(..kind.len() + ID_DIGITS)?;
    let (head, tail) = id.split_at_mut(kind.len());
    head.copy_from_slice(kind.as_bytes());
    tail.copy_from_slice(&digits);
    core::str::from_utf8(id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{agree, limit, mutations_agree, round_trip, wire_key};

    #[test]
    fn key_records_round_trip_compactly() {
        let hash = KeyHash::of(b"k");
        let record = |wire: &WireKey| Some(KeyRecord::try_from(wire).unwrap());
        // Ids as the control plane makes them are packed.
        let plain = wire_key(
            &hash,
            "key_0aZ9bY8cX7dW6eV5fU4g",
            "tnt_zzzzzzzzzzzzzzzzzzzz",
            "plan_00000000000000000000",
        );
        let bytes = encode_key_record(&plain).unwrap();
        assert_eq!(bytes.len(), 2 + 3 * 15);
        assert_eq!(decode_key_record(&bytes, &hash), record(&plain));

        // Any other ids are kept as text.
        let other = WireKey {
            id: "key_01JD3Q8Z5K2M7".into(),
            tenant_id: "acme".into(),
            plan_id: "plan_0aZ9bY8cX7dW6eV5fU4!".into(),
            ..plain.clone()
        };
        let bytes = encode_key_record(&other).unwrap();
        assert_eq!(bytes.len(), 2 + (1 + 17) + (1 + 4) + (1 + 25));
        assert_eq!(decode_key_record(&bytes, &hash), record(&other));

        let full = WireKey {
            active: false,
            expires_at_ms: Some(1_700_000_000_123),
            scopes: Some(vec![WireScope {
                methods: Some(vec!["GET".into()]),
                path_prefix: Some("/v1/".into()),
            }]),
            allowed_cidrs: Some(vec!["10.0.0.0/8".into()]),
            limits: Some(vec![limit("per-minute", 5, 60).with_burst(2)]),
            monthly_quota: Some(7),
            billing_anchor_day: Some(31),
            ..plain.clone()
        };
        let bytes = encode_key_record(&full).unwrap();
        assert_eq!(decode_key_record(&bytes, &hash), record(&full));

        // Truncated, extended, foreign or empty bytes are no record.
        for cut in 0..bytes.len() - 1 {
            let partial = decode_key_record(&bytes[..cut], &hash);
            assert!(partial.is_none(), "decoded {cut} bytes");
        }
        // Another format is no record.
        let mut other_format = encode_key_record(&other).unwrap();
        other_format[0] = 2;
        assert_eq!(decode_key_record(&other_format, &hash), None);

        let mut longer = encode_key_record(&plain).unwrap();
        longer.push(0);
        assert!(decode_key_record(&longer, &hash).is_none());
        assert!(decode_key_record(br#"{"id":"key_1"}"#, &hash).is_none());

        let long = WireKey {
            tenant_id: "t".repeat(256),
            ..plain
        };
        assert!(encode_key_record(&long).is_err());
    }

    #[test]
    fn key_extras_are_json_as_serde_json_writes_and_reads_it() {
        let full = KeyExtras {
            scopes: Some(vec![
                WireScope {
                    methods: Some(vec!["GET".into(), "HEAD".into()]),
                    path_prefix: Some("/v1/\"é\"".into()),
                },
                WireScope::default(),
            ]),
            allowed_cidrs: Some(vec!["10.0.0.0/8".into(), "::1/128".into()]),
            limits: Some(vec![limit("per-minute", u64::MAX, 60)
                .with_burst(0)
                .per_tenant()]),
        };
        round_trip(&full);
        round_trip(&KeyExtras::default());
        round_trip(&KeyExtras {
            scopes: Some(vec![]),
            allowed_cidrs: Some(vec![]),
            limits: Some(vec![]),
        });

        // Unknown fields are skipped whatever their value, which is
        // checked as serde_json checks a value it ignores.
        let nested =
            br#"{"x":{"a":[1,-2.5e+3,0,1E-7,true,false,null,"s\u12aB\/",{},[]]},"scopes":null}"#;
        let deep = format!(
            "{{\"x\":{}1{}}}",
            "[{\"a\":".repeat(5000),
            "}]".repeat(5000)
        );
        let cases: &[(&[u8], bool)] = &[
            (br#"{"x":1}"#, true),
            (nested, true),
            (deep.as_bytes(), true),
            (br#"{"x":1,"x":"again"}"#, true),
            (br#"{"x":"\ud800"}"#, true),
            (b"{\"x\":\"\xff\"}", true),
            (b"{\"x\":{\"\xff\\udc00\":1}}", true),
            (br#"{"x":-0.0e-0}"#, true),
            (br#"{"x":01}"#, false),
            (br#"{"x":-}"#, false),
            (br#"{"x":-a}"#, false),
            (br#"{"x":1.}"#, false),
            (br#"{"x":.1}"#, false),
            (br#"{"x":1e}"#, false),
            (br#"{"x":1e+}"#, false),
            (br#"{"x":+1}"#, false),
            (br#"{"x":[1,]}"#, false),
            (br#"{"x":[,]}"#, false),
            (br#"{"x":{"a":1,}}"#, false),
            (br#"{"x":{"a"}}"#, false),
            (br#"{"x":{"a":}}"#, false),
            (br#"{"x":{1:2}}"#, false),
            (br#"{"x":[}"#, false),
            (br#"{"x":[1}"#, false),
            (br#"{"x":{"a":1]}"#, false),
            (br#"{"x":[[]]]}"#, false),
            (br#"{"x":[[]}"#, false),
            (br#"{"x":"\q"}"#, false),
            (br#"{"x":"\u12"}"#, false),
            (b"{\"x\":\"a\nb\"}", false),
            (br#"{"x":tru}"#, false),
            (br#"{"x":nul}"#, false),
            (br#"{"x":}"#, false),
            (br#"{"x":1 2}"#, false),
            (br#"{"x":1"#, false),
            (br#"{"x":[1"#, false),
            (br#"{"x\ud800":1}"#, false),
            (br#"{"scopes":null,"scopes":null}"#, false),
            (br#"{"limits":[{"name":"a"}]}"#, false),
            (br#"[null,null,null]"#, true),
            (br#"[null,null,null,null]"#, false),
        ];
        for (input, accepted) in cases {
            let what = String::from_utf8_lossy(&input[..input.len().min(80)]);
            assert_eq!(agree::<KeyExtras>(input), *accepted, "{what}");
        }
        mutations_agree::<KeyExtras>(nested);
        mutations_agree::<KeyExtras>(&serde_json::to_vec(&full).unwrap());
    }

    #[test]
    fn packed_ids_are_exact_and_only_what_packing_writes_unpacks() {
        for id in [
            "key_00000000000000000000",
            "key_zzzzzzzzzzzzzzzzzzzz",
            "key_0000000000zzzzzzzzzz",
            "key_Az09aZ90zA8y7X6w5V4u",
        ] {
            let packed = pack_id(id, "key_").unwrap();
            let mut out = [0; UNPACKED_ID_LEN];
            assert_eq!(unpack_id(&packed, "key_", &mut out), Some(id));
        }
        for id in [
            "key_0000000000000000000",
            "key_000000000000000000000",
            "tnt_00000000000000000000",
            "key_0000000000000000000-",
            "key_000000000000000000é",
        ] {
            assert_eq!(pack_id(id, "key_"), None, "{id}");
        }
        // Each half is below 62^10: one more in either is no id.
        let top = pack_id("key_zzzzzzzzzzzzzzzzzzzz", "key_").unwrap();
        let n = u128::from_le_bytes([top.as_slice(), &[0]].concat().try_into().unwrap());
        for over in [n + 1, n + (1 << HALF_BITS)] {
            let bytes: [u8; PACKED_ID_LEN] =
                over.to_le_bytes()[..PACKED_ID_LEN].try_into().unwrap();
            assert_eq!(unpack_id(&bytes, "key_", &mut [0; UNPACKED_ID_LEN]), None);
        }
        let mut out = [0; UNPACKED_ID_LEN];
        assert_eq!(unpack_id(&[0xff; PACKED_ID_LEN], "key_", &mut out), None);
    }
}
