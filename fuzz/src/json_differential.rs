//! `json_differential`: `tollgate_core::json` held to serde_json on any bytes.
//!
//! The core's JSON module says it accepts and refuses exactly what
//! serde_json and the wire types' derives do, and writes byte for byte
//! what serde_json writes: the filter reads with it what the control plane
//! wrote with serde, and writes shared data an earlier filter wrote with
//! serde_json. So every input is read as each wire type (and the scalars and
//! containers they are made of) by both; both must accept or both refuse,
//! the values must be equal, and whatever was read and has a writer must be
//! written as serde_json writes it. The input as text goes through the
//! string writer too, which no reader limits to valid escapes.

use std::collections::BTreeMap;
use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tollgate_core::json::{self, Field, Fields, FromJson, Reader, ToJson};
use tollgate_core::wire::{
    FleetLeases, KeyUsage, LimitScope, QuotaSlice, QuotaStanding, ShareGrant, SyncResponse,
    UsageBatch, UsageReceipt, WireAnonymous, WireKey, WireLimit, WirePlan, WireRouteCost,
    WireScope,
};

pub fn check(input: &[u8]) {
    // What the filter reads from the control plane.
    if let Some(sync) = agree::<SyncResponse>(input) {
        // apply_sync writes these into shared data with `json::to_vec`.
        for plan in &sync.plans {
            written_alike(plan);
        }
        if let Some(anonymous) = &sync.anonymous {
            written_alike(anonymous);
        }
    }
    agree::<UsageReceipt>(input);
    agree::<WireKey>(input);
    agree::<FleetLeases>(input);
    agree::<ShareGrant>(input);
    agree::<QuotaSlice>(input);
    agree::<QuotaStanding>(input);
    // What it reads and writes.
    round_trip::<UsageBatch>(input);
    round_trip::<KeyUsage>(input);
    round_trip::<WirePlan>(input);
    round_trip::<WireLimit>(input);
    round_trip::<WireRouteCost>(input);
    round_trip::<WireScope>(input);
    round_trip::<WireAnonymous>(input);
    round_trip::<LimitScope>(input);
    // What they are made of.
    round_trip::<String>(input);
    round_trip::<u64>(input);
    round_trip::<u8>(input);
    round_trip::<bool>(input);
    round_trip::<Vec<u64>>(input);
    round_trip::<BTreeMap<String, u64>>(input);
    agree::<Option<u64>>(input);
    open_struct(input);

    let text = String::from_utf8_lossy(input).into_owned();
    written_alike(&text);
    written_alike(&BTreeMap::from([(text.clone(), 1u64)]));
    written_alike(&WireScope {
        methods: Some(vec![text.clone()]),
        path_prefix: Some(text),
    });
}

/// Both read `input` as a `T` or both refuse it; what both read is equal.
fn agree<T>(input: &[u8]) -> Option<T>
where
    T: FromJson + DeserializeOwned + PartialEq + Debug,
{
    let ours = json::from_slice::<T>(input);
    let theirs = serde_json::from_slice::<T>(input);
    match (ours, theirs) {
        (Ok(ours), Ok(theirs)) => {
            assert_eq!(ours, theirs, "{}", shown(input));
            Some(ours)
        }
        (Err(_), Err(_)) => None,
        (ours, theirs) => panic!(
            "{} as {}: ours {ours:?}, serde_json {theirs:?}",
            shown(input),
            core::any::type_name::<T>()
        ),
    }
}

/// [`agree`], and what was read is written as serde_json writes it and
/// reads back as itself.
fn round_trip<T>(input: &[u8])
where
    T: FromJson + ToJson + DeserializeOwned + Serialize + PartialEq + Debug,
{
    if let Some(value) = agree::<T>(input) {
        written_alike(&value);
        assert_eq!(
            json::from_slice::<T>(&json::to_vec(&value)).as_ref(),
            Ok(&value)
        );
    }
}

fn written_alike<T: ToJson + Serialize + ?Sized>(value: &T) {
    let ours = String::from_utf8(json::to_vec(value)).expect("JSON is written as text");
    let theirs = serde_json::to_string(value).expect("wire types serialise");
    assert_eq!(ours, theirs);
}

fn shown(input: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(input))
}

/// An object whose unknown fields are skipped, not refused: the shape of
/// the key record's JSON tail in shared data (`KeyExtras` in the core's
/// `layout/key_record.rs`, private there), so this is its mirror. Its
/// reader is the only one that skips values, with a loop of its own.
#[derive(Debug, Default, PartialEq, Deserialize)]
struct OpenExtras {
    #[serde(default)]
    scopes: Option<Vec<WireScope>>,
    #[serde(default)]
    allowed_cidrs: Option<Vec<String>>,
    #[serde(default)]
    limits: Option<Vec<WireLimit>>,
}

const OPEN_EXTRAS: Fields = Fields::open(&[
    Field::optional("scopes"),
    Field::optional("allowed_cidrs"),
    Field::optional("limits"),
]);

impl FromJson for OpenExtras {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, json::Error> {
        let mut v = OpenExtras::default();
        reader.object(&OPEN_EXTRAS, &mut |r, field| match field {
            0 => r.set(&mut v.scopes),
            1 => r.set(&mut v.allowed_cidrs),
            2 => r.set(&mut v.limits),
            _ => Ok(()),
        })?;
        Ok(v)
    }
}

fn open_struct(input: &[u8]) {
    agree::<OpenExtras>(input);
}
