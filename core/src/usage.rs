//! Counting what the filter decided, until the counts reach the control plane.
//!
//! Each VM tallies its decisions in memory (no host call per request) and
//! hands the tally over through a shared queue now and then, its keys
//! already written as the JSON entries of a batch's `keys`. The root context
//! that leads the Envoy drains the queue into [`HandOvers`], which splice
//! those entries together without reading a count, seals them into the
//! next batch in a [`ReportState`] kept in shared data, and reports it. A key
//! counted by several hand-overs is named once per hand-over in the batch;
//! the control plane sums them. So the leader's work, on Envoy's main thread
//! that requests may share a CPU with, is copying bytes, however many keys
//! there are (reading and re-writing every key's counts took about 0.8 µs a
//! key there, milliseconds a batch). Because that state lives in shared data
//! and not in the leader's VM, a new leader resends an unacknowledged batch
//! under its id (the control plane counts a batch once) and carries on with
//! the counts not yet sealed. Memory is bounded: past [`MAX_KEYS`] distinct
//! keys, further counts are dropped and the drop is itself counted, so the
//! loss is visible rather than silent.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use foldhash::fast::FixedState;
use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

use crate::json::write::Text;
use crate::json::{write_key_usage, Object};
use crate::wire::KeyUsage;

/// The keyless outcome counted for admitted anonymous requests.
pub const ANONYMOUS: &str = "anonymous";

/// Most distinct keys one tally holds.
pub const MAX_KEYS: usize = 100_000;

/// Most keys a cleared tally keeps room for: a tick's keys at some 80,000
/// requests a second on one worker, about 300 KiB.
pub const KEPT_ROOM: usize = 4_096;

#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// By key id, which each entry holds (a table, not a map, so a key new
    /// here is not copied: its entry shares the key record's id): hashed,
    /// as every admitted request looks its key up here. A fixed seed will
    /// do: the ids are the control plane's, never a client's, and foldhash
    /// is what the VM's memo already carries (`crate::cache`), so
    /// `filter.wasm` gains no second hasher. A batch lists its keys in this
    /// table's order; the control plane orders them itself before it writes.
    keys: HashTable<Counted>,
    unattributed: BTreeMap<String, u64>,
    dropped: u64,
}

/// One key's counts in a [`Tally`]: a [`KeyUsage`] whose id is shared, not
/// owned. With many distinct keys most requests start an entry, and the
/// id they bring is their key record's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Counted {
    key_id: Arc<str>,
    allowed: u64,
    cost: u64,
    denied: BTreeMap<String, u64>,
    last_used_ms: Option<u64>,
}

impl Counted {
    /// Adds requests let through, their cost and the last one's time, saturating.
    fn count(&mut self, allowed: u64, cost: u64, last_used_ms: Option<u64>) {
        self.allowed = self.allowed.saturating_add(allowed);
        self.cost = self.cost.saturating_add(cost);
        self.last_used_ms = self.last_used_ms.max(last_used_ms);
    }
}

impl From<KeyUsage> for Counted {
    fn from(usage: KeyUsage) -> Self {
        Self {
            key_id: usage.key_id.into(),
            allowed: usage.allowed,
            cost: usage.cost,
            denied: usage.denied,
            last_used_ms: usage.last_used_ms,
        }
    }
}

/// The same counts, in whatever order each table holds them.
impl PartialEq for Tally {
    fn eq(&self, other: &Self) -> bool {
        self.dropped == other.dropped
            && self.unattributed == other.unattributed
            && self.keys.len() == other.keys.len()
            && self.keys.iter().all(|usage| {
                other
                    .keys
                    .find(hash_of(&usage.key_id), |u| u.key_id == usage.key_id)
                    .is_some_and(|theirs| theirs == usage)
            })
    }
}

impl Eq for Tally {}

/// A key id's place in [`Tally::keys`].
fn hash_of(key_id: &str) -> u64 {
    FixedState::default().hash_one(key_id)
}

impl Tally {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.unattributed.is_empty() && self.dropped == 0
    }

    /// The entry of `key_id`, new if it is not counted yet (holding
    /// `shared`, if given, else a copy); `None` when the tally is full.
    /// Hashed once: with many distinct keys, most requests are for a key
    /// new here.
    fn entry(&mut self, key_id: &str, shared: Option<&Arc<str>>) -> Option<&mut Counted> {
        let full = self.keys.len() >= MAX_KEYS;
        let found = self.keys.entry(
            hash_of(key_id),
            |u| *u.key_id == *key_id,
            |u| hash_of(&u.key_id),
        );
        match found {
            Entry::Occupied(found) => Some(found.into_mut()),
            Entry::Vacant(_) if full => None,
            Entry::Vacant(slot) => {
                let usage = Counted {
                    key_id: shared.cloned().unwrap_or_else(|| key_id.into()),
                    ..Counted::default()
                };
                Some(slot.insert(usage).into_mut())
            }
        }
    }

    /// An admitted request that cost `cost`. Every admitted request comes
    /// here: one lookup, and no allocation for a key already counted.
    pub fn allowed(&mut self, key_id: &Arc<str>, cost: u64, now_ms: u64) {
        match self.entry(key_id, Some(key_id)) {
            Some(usage) => usage.count(1, cost, Some(now_ms)),
            None => self.dropped = self.dropped.saturating_add(1),
        }
    }

    /// An anonymous request admitted: counted with the keyless outcomes.
    pub fn anonymous(&mut self) {
        add_count(&mut self.unattributed, ANONYMOUS, 1);
    }

    /// A refusal, by its `code`, charged to the key when one was identified.
    pub fn denied(&mut self, key_id: Option<&Arc<str>>, code: &str) {
        let counts = match key_id {
            Some(key_id) => match self.entry(key_id, Some(key_id)) {
                Some(usage) => &mut usage.denied,
                None => {
                    self.dropped = self.dropped.saturating_add(1);
                    return;
                }
            },
            None => &mut self.unattributed,
        };
        add_count(counts, code, 1);
    }

    /// Adds `other`'s counts to these (the tests' reference for what the
    /// leader's spliced batch must add up to).
    #[cfg(test)]
    fn merge(&mut self, other: Tally) {
        self.dropped = self.dropped.saturating_add(other.dropped);
        add_counts(&mut self.unattributed, other.unattributed);
        for usage in other.keys {
            self.add_usage(usage);
        }
    }

    /// Adds one key's counts; past [`MAX_KEYS`] they are dropped, and
    /// counted as dropped. Through [`Tally::entry`] and [`add_count`], as
    /// every request's count, so `filter.wasm` holds one copy of the
    /// table's code: it runs only when counts are compacted.
    fn add_usage(&mut self, usage: Counted) {
        let Some(mine) = self.entry(&usage.key_id, Some(&usage.key_id)) else {
            let weight = usage
                .allowed
                .saturating_add(usage.denied.values().sum::<u64>());
            self.dropped = self.dropped.saturating_add(weight);
            return;
        };
        mine.count(usage.allowed, usage.cost, usage.last_used_ms);
        for (code, n) in usage.denied {
            add_count(&mut mine.denied, &code, n);
        }
    }

    /// Empties the tally into a batch named `batch_id` (the tests'
    /// reference, as `merge`).
    #[cfg(test)]
    fn seal(&mut self, batch_id: String) -> crate::wire::UsageBatch {
        let taken = std::mem::take(self);
        crate::wire::UsageBatch {
            batch_id,
            keys: taken
                .keys
                .into_iter()
                .map(|c| KeyUsage {
                    key_id: c.key_id.to_string(),
                    allowed: c.allowed,
                    cost: c.cost,
                    denied: c.denied,
                    last_used_ms: c.last_used_ms,
                })
                .collect(),
            unattributed: taken.unattributed,
            dropped: taken.dropped,
            ..crate::wire::UsageBatch::default()
        }
    }

    /// The tally a worker hands over, as bytes for a shared queue: its keys
    /// as the JSON entries of a batch's `keys` (so the leader copies them
    /// and reads no count), its other counts in a compact binary form. With
    /// many distinct keys each request adds an entry, so its cost per entry
    /// is a cost per request, on the worker's thread.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut entries = String::with_capacity(96 * self.keys.len());
        for (i, usage) in self.keys.iter().enumerate() {
            if i > 0 {
                entries.push(',');
            }
            write_key_usage(
                &mut entries,
                &usage.key_id,
                usage.allowed,
                usage.cost,
                &usage.denied,
                usage.last_used_ms,
            );
        }
        hand_over_bytes(
            self.dropped,
            &self.unattributed,
            self.keys.len(),
            entries.as_bytes(),
        )
    }

    /// Empties the tally after a hand-over, keeping the room its table
    /// grew to (up to [`KEPT_ROOM`] keys): the next tick's keys fill it
    /// again without growing it step by step, each step moving every key.
    pub fn clear(&mut self) {
        self.keys.clear();
        self.keys.shrink_to(KEPT_ROOM, |u| hash_of(&u.key_id));
        self.unattributed.clear();
        self.dropped = 0;
    }

    /// Distinct keys counted.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Counts dropped because the tally was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// The first byte of [`Tally::to_bytes`].
const HAND_OVER_FORMAT: u8 = 2;
/// The first byte of a hand-over as the filter wrote it before 2026-12-07
/// (every key's counts in binary), still read: what a VM of the older
/// filter handed over just before an upgrade is counted too.
const TALLY_FORMAT_V1: u8 = 1;

/// A hand-over's bytes: `HAND_OVER_FORMAT`, the drops, the keyless counts,
/// how many key entries, then the entries themselves.
fn hand_over_bytes(
    dropped: u64,
    unattributed: &BTreeMap<String, u64>,
    entries: usize,
    json: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + 32 * unattributed.len() + json.len());
    push_hand_over(&mut out, dropped, unattributed, entries, json);
    out
}

fn push_hand_over(
    out: &mut Vec<u8>,
    dropped: u64,
    unattributed: &BTreeMap<String, u64>,
    entries: usize,
    json: &[u8],
) {
    out.push(HAND_OVER_FORMAT);
    push_u64(out, dropped);
    push_counts(out, unattributed);
    push_len(out, entries);
    push_len(out, json.len());
    out.extend_from_slice(json);
}

/// Hand-overs as the leader drains them into a batch: their key entries
/// spliced together as the JSON the batch carries, their drops and keyless
/// counts summed. No key is looked up and no count read, so draining costs
/// a copy of the bytes however many keys they name.
///
/// The entries are trusted as JSON: only this filter writes the usage
/// queue, and each hand-over's format byte and lengths are checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandOvers {
    /// Key entries, JSON objects separated by commas.
    json: Vec<u8>,
    /// How many entries `json` holds.
    entries: usize,
    unattributed: BTreeMap<String, u64>,
    dropped: u64,
}

impl HandOvers {
    pub fn is_empty(&self) -> bool {
        self.entries == 0 && self.unattributed.is_empty() && self.dropped == 0
    }

    /// Key entries so far; a key counted in several hand-overs has several.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Counts dropped because a worker's tally was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Adds a hand-over ([`Tally::to_bytes`], or the older binary form).
    /// False, and nothing added, if the bytes are neither.
    pub fn add_bytes(&mut self, bytes: &[u8]) -> bool {
        match bytes.split_first() {
            Some((&HAND_OVER_FORMAT, rest)) => match Reader(rest).hand_over() {
                Some(part) => {
                    self.add(part);
                    true
                }
                None => false,
            },
            Some((&TALLY_FORMAT_V1, rest)) => {
                let mut tally = Tally::default();
                if Reader(rest).add_to(None).is_none()
                    || Reader(rest).add_to(Some(&mut tally)).is_none()
                {
                    return false;
                }
                self.add_bytes(&tally.to_bytes())
            }
            _ => false,
        }
    }

    /// Reads what [`HandOvers::to_bytes`] (or a hand-over) wrote.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let mut all = Self::default();
        all.add_bytes(bytes).then_some(all)
    }

    /// All of them as one hand-over: to go back into the queue, or to wait
    /// in the reporter state for the next batch.
    pub fn to_bytes(&self) -> Vec<u8> {
        hand_over_bytes(self.dropped, &self.unattributed, self.entries, &self.json)
    }

    /// [`HandOvers::to_bytes`] at the end of `out`.
    fn push_to(&self, out: &mut Vec<u8>) {
        push_hand_over(
            out,
            self.dropped,
            &self.unattributed,
            self.entries,
            &self.json,
        );
    }

    /// The same counts with each key named once: the entries read back and
    /// summed (past [`MAX_KEYS`] keys dropped, and counted as dropped). It
    /// reads every count, so it is for counts piling up while the control
    /// plane does not answer, and for a batch that would otherwise name
    /// more than [`MAX_KEYS`] entries. Entries that do not read are kept as
    /// they are: the control plane judges them.
    pub fn compacted(&self) -> HandOvers {
        let mut listed = Vec::with_capacity(self.json.len() + 2);
        listed.push(b'[');
        listed.extend_from_slice(&self.json);
        listed.push(b']');
        let mut tally = Tally {
            unattributed: self.unattributed.clone(),
            dropped: self.dropped,
            ..Tally::default()
        };
        // Each entry summed as it is read: no list of them all.
        let mut reader = crate::json::Reader::new(&listed);
        let read = reader.array(&mut |entry| {
            tally.add_usage(entry.read::<KeyUsage>()?.into());
            Ok(())
        });
        if read.and_then(|()| reader.end()).is_err() {
            return self.clone();
        }
        HandOvers::from_bytes(&tally.to_bytes()).unwrap_or_else(|| self.clone())
    }

    /// Adds `other`'s entries and counts.
    pub fn append(&mut self, other: &HandOvers) {
        self.add(Part {
            dropped: other.dropped,
            unattributed: other
                .unattributed
                .iter()
                .map(|(c, n)| (c.as_str(), *n))
                .collect(),
            entries: other.entries,
            json: &other.json,
        });
    }

    fn add(&mut self, part: Part<'_>) {
        self.dropped = self.dropped.saturating_add(part.dropped);
        for (code, n) in part.unattributed {
            add_count(&mut self.unattributed, code, n);
        }
        if part.entries > 0 {
            if self.entries > 0 {
                self.json.push(b',');
            }
            self.json.extend_from_slice(part.json);
            self.entries = self.entries.saturating_add(part.entries);
        }
    }

    /// The request body of batch `batch_id`: its fields written as any
    /// batch's, and its `keys` the entries, spliced in as they are.
    fn body(
        &self,
        batch_id: &str,
        reporter_id: &str,
        standings_since: u64,
        leases_applied: u64,
    ) -> Vec<u8> {
        let mut head = String::with_capacity(160 + 32 * self.unattributed.len());
        Object::new(&mut head)
            .field("batch_id", &Text(batch_id))
            .field("reporter_id", &Text(reporter_id))
            .field("standings_since", &standings_since)
            .field("unattributed", &self.unattributed)
            .field("dropped", &self.dropped)
            .field("leases_applied", &leases_applied);
        // Left open for the last field, `keys`: the control plane reads
        // the fields in any order.
        head.push_str(",\"keys\":[");
        let mut body = Vec::with_capacity(head.len() + self.json.len() + 2);
        body.extend_from_slice(head.as_bytes());
        body.extend_from_slice(&self.json);
        body.extend_from_slice(b"]}");
        body
    }
}

/// One hand-over as read, borrowing its entries.
struct Part<'a> {
    dropped: u64,
    unattributed: Vec<(&'a str, u64)>,
    entries: usize,
    json: &'a [u8],
}

/// A batch sealed and sent, not yet acknowledged: resent under the same id,
/// byte for byte, until the control plane answers for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sealed {
    pub batch_id: String,
    /// The request body, JSON: kept as sent so that a resend, by this
    /// leader or the next, costs a copy rather than an encoding.
    pub body: Vec<u8>,
}

/// The usage reporter's whole state, in shared data
/// ([`crate::layout::REPORT_KEY`]) so that it outlives the leader that
/// wrote it. Reading and writing it copies bytes and parses no counts: the
/// leader does that every second, on a thread it may share with requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportState {
    /// This Envoy as the control plane knows it (`reporter_id`): chosen by
    /// the first leader and kept by the next ones. Quota standings leave out
    /// the reporter's own counts, so a new id for the same Envoy would
    /// count its past requests against it twice.
    pub instance: String,
    /// The number of the last batch sealed; batch ids are
    /// `<instance>-<sequence>`.
    pub sequence: u64,
    /// The last receipt's `cursor`: standings up to here are applied.
    pub standings_since: u64,
    /// The batch in flight, if one is.
    pub pending: Option<Sealed>,
    /// Counts handed over while a batch was pending, sealed into the next
    /// batch: read once with the state and added to in place, so a move of
    /// counts into the state copies what it holds once in, once out.
    open: HandOvers,
}

/// The first byte of [`ReportState::to_bytes`].
const REPORT_FORMAT: u8 = 2;

impl ReportState {
    pub fn new(instance: String) -> Self {
        Self {
            instance,
            ..Self::default()
        }
    }

    /// Keeps `counts` for the next batch while one is pending, and sums
    /// the kept counts per key once they name more than `entries`: how many
    /// entries the sum left, if it summed (at most [`MAX_KEYS`] keys, the
    /// rest dropped and counted as dropped). So however long the control
    /// plane stays away they take the room of the keys counted, not of the
    /// hand-overs: the leader asks for a sum past twice what the last one
    /// left (see `filter::report`), so summing reads each entry about
    /// twice, and a move, which copies all the state holds, copies at most
    /// about twice the keys counted.
    pub fn keep_summing_above(&mut self, counts: &HandOvers, entries: usize) -> Option<usize> {
        if counts.is_empty() {
            return None;
        }
        self.open.append(counts);
        (self.open.entries() > entries).then(|| {
            self.open = self.open.compacted();
            self.open.entries()
        })
    }

    /// Seals the counts kept so far and `counts` into the next batch, as
    /// the body to send, unless a batch is still pending (then `counts` are
    /// kept as they are, for [`ReportState::keep_summing_above`] to sum
    /// with the rest). An empty batch is
    /// sealed too: it is the heartbeat whose answer carries the other
    /// Envoys' quota use and this Envoy's fleet leases; `leases_applied`
    /// acknowledges the last of those applied. Returns the counts it
    /// dropped for being full.
    pub fn seal(&mut self, counts: &HandOvers, leases_applied: u64) -> Option<u64> {
        if self.pending.is_some() {
            self.open.append(counts);
            return None;
        }
        let merged;
        let all = if self.open.is_empty() {
            counts
        } else {
            let mut open = std::mem::take(&mut self.open);
            open.append(counts);
            merged = open;
            &merged
        };
        // The control plane takes at most MAX_KEYS entries a batch.
        let compact;
        let all = if all.entries() > MAX_KEYS {
            compact = all.compacted();
            &compact
        } else {
            all
        };
        self.sequence = self.sequence.saturating_add(1);
        let batch_id = format!("{}-{}", self.instance, self.sequence);
        let body = all.body(
            &batch_id,
            &self.instance,
            self.standings_since,
            leases_applied,
        );
        self.pending = Some(Sealed { batch_id, body });
        Some(all.dropped())
    }

    /// Entries kept for the next batch: a key counted in several
    /// hand-overs since the last sum has several.
    pub fn kept_entries(&self) -> usize {
        self.open.entries()
    }

    /// The control plane answered for `batch_id`; whether it was the
    /// pending one (an answer to a batch already settled changes nothing).
    pub fn settle(&mut self, batch_id: &str) -> bool {
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.batch_id == batch_id)
        {
            self.pending = None;
            return true;
        }
        false
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let body = self.pending.as_ref().map_or(0, |p| p.body.len());
        let mut out = Vec::with_capacity(96 + body + self.open.json.len());
        out.push(REPORT_FORMAT);
        push_text(&mut out, &self.instance);
        push_u64(&mut out, self.sequence);
        push_u64(&mut out, self.standings_since);
        match &self.pending {
            Some(p) => {
                out.push(1);
                push_text(&mut out, &p.batch_id);
                push_len(&mut out, p.body.len());
                out.extend_from_slice(&p.body);
            }
            None => out.push(0),
        }
        if !self.open.is_empty() {
            self.open.push_to(&mut out);
        }
        out
    }

    /// Reads what [`ReportState::to_bytes`] wrote; `None` if it is not that.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (&REPORT_FORMAT, rest) = bytes.split_first()? else {
            return None;
        };
        let mut r = Reader(rest);
        let instance = r.text()?;
        let sequence = r.u64()?;
        let standings_since = r.u64()?;
        let (&has_pending, rest) = r.0.split_first()?;
        r.0 = rest;
        let pending = match has_pending {
            0 => None,
            1 => {
                let batch_id = r.text()?;
                let len = r.len()?;
                let (body, rest) = r.0.split_at_checked(len)?;
                r.0 = rest;
                Some(Sealed {
                    batch_id,
                    body: body.to_vec(),
                })
            }
            _ => return None,
        };
        let open = match r.0 {
            [] => HandOvers::default(),
            open => HandOvers::from_bytes(open)?,
        };
        Some(Self {
            instance,
            sequence,
            standings_since,
            pending,
            open,
        })
    }
}

/// Adds `n` to `code`'s count; allocates only for a code not there yet
/// (it runs for every refusal).
fn add_count(into: &mut BTreeMap<String, u64>, code: &str, n: u64) {
    match into.get_mut(code) {
        Some(mine) => *mine = mine.saturating_add(n),
        None => {
            into.insert(code.to_owned(), n);
        }
    }
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    push_u64(out, u64::try_from(len).unwrap_or(u64::MAX));
}

fn push_text(out: &mut Vec<u8>, text: &str) {
    push_len(out, text.len());
    out.extend_from_slice(text.as_bytes());
}

fn push_counts(out: &mut Vec<u8>, counts: &BTreeMap<String, u64>) {
    push_len(out, counts.len());
    for (code, n) in counts {
        push_text(out, code);
        push_u64(out, *n);
    }
}

/// Reads [`Tally::to_bytes`]'s form from the front of its slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u64(&mut self) -> Option<u64> {
        let (n, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_le_bytes(*n))
    }

    /// A length, which cannot exceed the bytes left (each item takes one at
    /// least), so a corrupt one cannot make a huge allocation.
    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.u64()?)
            .ok()
            .filter(|&n| n <= self.0.len())
    }

    fn text(&mut self) -> Option<String> {
        self.str().map(str::to_owned)
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = self.len()?;
        let (text, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        core::str::from_utf8(text).ok()
    }

    /// Reads a whole hand-over ([`hand_over_bytes`], after its format byte).
    fn hand_over(mut self) -> Option<Part<'a>> {
        let dropped = self.u64()?;
        let mut unattributed = Vec::new();
        for _ in 0..self.len()? {
            unattributed.push((self.str()?, self.u64()?));
        }
        let entries = self.len()?;
        let len = self.len()?;
        let (json, rest) = self.0.split_at_checked(len)?;
        // Every entry takes bytes, and there are none without entries.
        if !rest.is_empty() || entries > json.len() || (entries == 0) != json.is_empty() {
            return None;
        }
        Some(Part {
            dropped,
            unattributed,
            entries,
            json,
        })
    }

    /// Reads a whole tally in the older binary form and adds it to `into`;
    /// with `None`, only checks that it reads.
    fn add_to(mut self, mut into: Option<&mut Tally>) -> Option<()> {
        let dropped = self.u64()?;
        if let Some(t) = into.as_deref_mut() {
            t.dropped = t.dropped.saturating_add(dropped);
        }
        for _ in 0..self.len()? {
            let (code, n) = (self.str()?, self.u64()?);
            if let Some(t) = into.as_deref_mut() {
                add_count(&mut t.unattributed, code, n);
            }
        }
        for _ in 0..self.len()? {
            let key_id = self.str()?;
            let allowed = self.u64()?;
            let cost = self.u64()?;
            let (&seen, rest) = self.0.split_first()?;
            self.0 = rest;
            let last_used_ms = match seen {
                0 => None,
                1 => Some(self.u64()?),
                _ => return None,
            };
            let denied_at = self.0;
            let mut weight = allowed;
            for _ in 0..self.len()? {
                let (_, n) = (self.str()?, self.u64()?);
                weight = weight.saturating_add(n);
            }
            let Some(t) = into.as_deref_mut() else {
                continue;
            };
            let Some(usage) = t.entry(key_id, None) else {
                t.dropped = t.dropped.saturating_add(weight);
                continue;
            };
            usage.count(allowed, cost, last_used_ms);
            let mut denied = Reader(denied_at);
            for _ in 0..denied.len()? {
                let (code, n) = (denied.str()?, denied.u64()?);
                add_count(&mut usage.denied, code, n);
            }
        }
        self.0.is_empty().then_some(())
    }
}

#[cfg(test)]
fn add_counts(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (code, n) in from {
        let mine = into.entry(code).or_insert(0);
        *mine = mine.saturating_add(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::UsageBatch;

    /// A batch's counts per key as the control plane reads them: the
    /// entries of a key named more than once summed.
    fn summed(batch: &UsageBatch) -> BTreeMap<String, KeyUsage> {
        let mut out: BTreeMap<String, KeyUsage> = BTreeMap::new();
        for k in &batch.keys {
            let mine = out.entry(k.key_id.clone()).or_insert_with(|| KeyUsage {
                key_id: k.key_id.clone(),
                ..KeyUsage::default()
            });
            mine.allowed += k.allowed;
            mine.cost += k.cost;
            mine.last_used_ms = mine.last_used_ms.max(k.last_used_ms);
            add_counts(&mut mine.denied, k.denied.clone());
        }
        out
    }

    /// `tally` as the leader drains it.
    fn drained(tally: &Tally) -> HandOvers {
        HandOvers::from_bytes(&tally.to_bytes()).unwrap()
    }

    /// A tally in the binary form hand-overs had before 2026-12-07.
    fn v1_bytes(t: &Tally) -> Vec<u8> {
        let mut out = vec![TALLY_FORMAT_V1];
        push_u64(&mut out, t.dropped);
        push_counts(&mut out, &t.unattributed);
        push_len(&mut out, t.keys.len());
        for usage in &t.keys {
            push_text(&mut out, &usage.key_id);
            push_u64(&mut out, usage.allowed);
            push_u64(&mut out, usage.cost);
            match usage.last_used_ms {
                Some(ms) => {
                    out.push(1);
                    push_u64(&mut out, ms);
                }
                None => out.push(0),
            }
            push_counts(&mut out, &usage.denied);
        }
        out
    }

    fn sent(s: &ReportState) -> UsageBatch {
        serde_json::from_slice(&s.pending.as_ref().unwrap().body).unwrap()
    }

    /// `tally`'s counts sealed into a batch by a new reporter.
    fn sealed(tally: &Tally) -> UsageBatch {
        let mut s = ReportState::new("env".into());
        s.seal(&drained(tally), 0);
        sent(&s)
    }

    #[test]
    fn counts_allowed_and_denied_per_key_and_unattributed() {
        let mut t = Tally::default();
        assert!(t.is_empty());
        t.allowed(&"key_a".into(), 1, 1_000);
        t.allowed(&"key_a".into(), 3, 900);
        t.anonymous();
        t.denied(Some(&"key_a".into()), "rate_limited");
        t.denied(None, "invalid_api_key");
        t.denied(None, "invalid_api_key");
        let from_bytes = sealed(&t);
        let batch = t.seal("b1".into());
        assert!(t.is_empty());
        assert_eq!(batch.batch_id, "b1");
        assert_eq!(batch.keys.len(), 1);
        let a = &batch.keys[0];
        assert_eq!((a.allowed, a.cost, a.last_used_ms), (2, 4, Some(1_000)));
        assert_eq!(batch.unattributed.get(ANONYMOUS), Some(&1));
        assert_eq!(a.denied.get("rate_limited"), Some(&1));
        assert_eq!(batch.unattributed.get("invalid_api_key"), Some(&2));
        // Handed over and sealed by the leader: the same counts.
        assert_eq!(from_bytes.keys, batch.keys);
        assert_eq!(from_bytes.unattributed, batch.unattributed);
    }

    #[test]
    fn hand_overs_are_spliced_and_the_sum_is_what_was_counted() {
        let mut worker = Tally::default();
        worker.allowed(&"key_a".into(), 2, 5);
        worker.denied(Some(&"key_b".into()), "forbidden");
        worker.denied(None, "invalid_api_key");
        worker.dropped = 2;
        let mut other = Tally::default();
        other.allowed(&"key_a".into(), 1, 7);
        other.allowed(&"key_\"é\"".into(), 1, 7);
        let mut all = HandOvers::default();
        for bytes in [worker.to_bytes(), other.to_bytes(), worker.to_bytes()] {
            assert!(all.add_bytes(&bytes));
        }
        // One entry per key per hand-over: key_a three times, key_b twice.
        assert_eq!(all.entries(), 6);
        let mut s = ReportState::new("env".into());
        assert_eq!(s.seal(&all, 9), Some(4));
        let batch = sent(&s);
        assert_eq!((batch.keys.len(), batch.dropped), (6, 4));
        assert_eq!(
            (batch.leases_applied, batch.reporter_id.as_str()),
            (9, "env")
        );
        assert_eq!(batch.unattributed.get("invalid_api_key"), Some(&2));
        let keys = summed(&batch);
        let a = &keys["key_a"];
        assert_eq!((a.allowed, a.cost, a.last_used_ms), (3, 5, Some(7)));
        let b = &keys["key_b"];
        assert_eq!((b.allowed, b.last_used_ms), (0, None));
        assert_eq!(b.denied.get("forbidden"), Some(&2));
        assert_eq!(keys["key_\"é\""].allowed, 1);
        assert!(!all.add_bytes(b"not a hand-over"));
        assert!(HandOvers::from_bytes(b"").is_none());
    }

    #[test]
    fn handed_over_bytes_keep_everything_and_garbage_reads_as_nothing() {
        let mut t = Tally::default();
        t.allowed(&"key_a".into(), 3, 1_700_000_000_000);
        t.denied(Some(&"key_a".into()), "rate_limited");
        t.denied(Some(&"key_é".into()), "quota_exceeded");
        t.denied(None, "invalid_api_key");
        t.anonymous();
        t.dropped = 7;
        let bytes = t.to_bytes();
        let read = HandOvers::from_bytes(&bytes).unwrap();
        assert_eq!(read.to_bytes(), bytes);
        assert_eq!((read.entries(), read.dropped()), (2, 7));
        assert_eq!(
            HandOvers::from_bytes(&Tally::default().to_bytes()),
            Some(HandOvers::default())
        );
        for cut in 0..bytes.len() {
            assert_eq!(HandOvers::from_bytes(&bytes[..cut]), None, "{cut} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(HandOvers::from_bytes(&longer), None);
        // A length past the end is refused before anything is allocated.
        let mut huge = vec![HAND_OVER_FORMAT];
        huge.extend_from_slice(&0u64.to_le_bytes());
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(HandOvers::from_bytes(&huge), None);
    }

    #[test]
    fn a_hand_over_of_the_older_binary_form_counts_the_same() {
        let mut t = Tally::default();
        t.allowed(&"key_a".into(), 2, 5);
        t.denied(Some(&"key_a".into()), "rate_limited");
        t.denied(Some(&"key_b".into()), "forbidden");
        t.denied(None, "invalid_api_key");
        t.anonymous();
        t.dropped = 3;
        let old = HandOvers::from_bytes(&v1_bytes(&t)).unwrap();
        assert_eq!(old, drained(&t));
        // A cut or altered one adds nothing at all.
        let bytes = v1_bytes(&t);
        for cut in 0..bytes.len() {
            let mut all = drained(&t);
            assert!(!all.add_bytes(&bytes[..cut]), "{cut} bytes");
            assert_eq!(all, drained(&t));
        }
        // And a reporter state whose waiting counts are in that form reads.
        let mut bytes = ReportState::new("env".into()).to_bytes();
        bytes.extend_from_slice(&v1_bytes(&t));
        let s = ReportState::from_bytes(&bytes).unwrap();
        let mut s2 = s.clone();
        s2.seal(&HandOvers::default(), 0);
        let a = &summed(&sent(&s2))["key_a"];
        assert_eq!((a.allowed, a.cost), (1, 2));
    }

    #[test]
    fn counts_that_pile_up_are_summed_per_key_and_a_batch_never_passes_max_keys() {
        let mut ten = Tally::default();
        for i in 0..10 {
            ten.allowed(&format!("k{i}").into(), 1, 5);
            ten.denied(Some(&format!("k{i}").into()), "rate_limited");
        }
        ten.denied(None, "invalid_api_key");
        let one = drained(&ten);
        let mut piled = HandOvers::default();
        let times = MAX_KEYS / 10 + 1;
        for _ in 0..times {
            piled.append(&one);
        }
        assert!(piled.entries() > MAX_KEYS);
        let compact = piled.compacted();
        assert_eq!(compact.entries(), 10);
        // Kept while a batch is pending: summed once past the entries asked.
        let mut s = ReportState::new("env".into());
        s.seal(&HandOvers::default(), 0);
        s.keep_summing_above(&piled, MAX_KEYS);
        assert_eq!(s.open.entries(), 10);
        s.settle("env-1");
        s.seal(&one, 0);
        let batch = sent(&s);
        assert_eq!(batch.keys.len(), 20);
        let k0 = &summed(&batch)["k0"];
        let n = times as u64 + 1;
        assert_eq!((k0.allowed, k0.denied["rate_limited"]), (n, n));
        assert_eq!(batch.unattributed["invalid_api_key"], n);
        // Sealed at once, without a pending batch: summed too.
        let mut fresh = ReportState::new("env".into());
        fresh.seal(&piled, 0);
        assert_eq!(sent(&fresh).keys.len(), 10);
        // Entries that do not read are kept as they are, with those before
        // them that did (each is summed as it is read).
        for (json, entries) in [
            (&b"{\"key_id\":"[..], 1),
            (b"{\"key_id\":\"k0\",\"allowed\":1},{\"key_id\":\"k0\"", 2),
            (b"{\"key_id\":\"k0\",\"allowed\":1}]", 1),
        ] {
            let odd = HandOvers {
                json: json.to_vec(),
                entries,
                ..HandOvers::default()
            };
            assert_eq!(odd.compacted(), odd);
        }
    }

    #[test]
    fn compacting_more_than_max_keys_keys_drops_the_rest_and_counts_them() {
        let mut full = Tally::default();
        for i in 0..MAX_KEYS {
            full.allowed(&format!("k{i}").into(), 1, 5);
        }
        let mut more = Tally::default();
        for i in 0..3 {
            let key = format!("new{i}");
            more.allowed(&key.as_str().into(), 4, 5);
            more.denied(Some(&key.as_str().into()), "rate_limited");
        }
        let mut piled = drained(&full);
        piled.append(&drained(&full));
        piled.append(&drained(&more));
        let compact = piled.compacted();
        assert_eq!(compact.entries(), MAX_KEYS);
        // Each dropped key's requests, allowed and refused.
        assert_eq!(compact.dropped(), 3 * 2);
        let mut s = ReportState::new("env".into());
        s.seal(&compact, 0);
        let batch = summed(&sent(&s));
        assert_eq!(batch.len(), MAX_KEYS);
        assert!(batch.values().all(|k| (k.allowed, k.cost) == (2, 2)));
    }

    #[test]
    fn a_cleared_tally_counts_afresh_and_keeps_bounded_room() {
        let mut t = Tally::default();
        for i in 0..10_000 {
            t.allowed(&format!("k{i}").into(), 1, 1);
        }
        t.denied(None, "invalid_api_key");
        t.dropped = 2;
        t.clear();
        assert!(t.is_empty());
        assert_eq!(t, Tally::default());
        assert!(t.keys.capacity() >= KEPT_ROOM.min(10_000) / 2);
        assert!(t.keys.capacity() < 10_000, "{}", t.keys.capacity());
        t.allowed(&"k1".into(), 1, 3);
        assert_eq!(drained(&t).entries(), 1);
    }

    #[test]
    fn past_max_keys_counts_are_dropped_and_the_drop_is_counted() {
        let mut t = Tally::default();
        for i in 0..MAX_KEYS {
            t.allowed(&format!("k{i}").into(), 1, 1);
        }
        t.allowed(&"k0".into(), 1, 2);
        t.allowed(&"one-too-many".into(), 1, 2);
        t.denied(Some(&"another".into()), "rate_limited");
        let mut other = Tally::default();
        other.allowed(&"third".into(), 1, 1);
        other.allowed(&"third".into(), 1, 1);
        t.merge(other);
        let batch = t.seal(String::new());
        assert_eq!(batch.keys.len(), MAX_KEYS);
        assert_eq!(batch.dropped, 4);
        assert_eq!(
            batch
                .keys
                .iter()
                .find(|k| k.key_id == "k0")
                .unwrap()
                .allowed,
            2
        );
    }

    fn counted(n: u64) -> HandOvers {
        let mut t = Tally::default();
        for _ in 0..n {
            t.allowed(&"key_a".into(), 1, 10);
        }
        drained(&t)
    }

    #[test]
    fn kept_counts_are_summed_past_the_entries_asked_and_say_what_the_sum_left() {
        let mut s = ReportState::new("env".into());
        s.seal(&HandOvers::default(), 0);
        assert_eq!(s.keep_summing_above(&counted(2), 2), None);
        assert_eq!(s.keep_summing_above(&counted(3), 2), None);
        assert_eq!(s.open.entries(), 2);
        assert_eq!(s.keep_summing_above(&counted(1), 2), Some(1));
        assert_eq!(s.keep_summing_above(&HandOvers::default(), 0), None);
        s.settle("env-1");
        s.seal(&HandOvers::default(), 0);
        assert_eq!(summed(&sent(&s))["key_a"].allowed, 6);
    }

    #[test]
    fn a_sealed_batch_keeps_its_id_and_body_until_settled_and_new_counts_wait() {
        let mut s = ReportState::new("env1".into());
        s.standings_since = 5;
        assert_eq!(s.seal(&counted(2), 0), Some(0));
        let first = s.pending.clone().unwrap();
        assert_eq!(first.batch_id, "env1-1");
        let b = sent(&s);
        assert_eq!((b.keys[0].allowed, b.reporter_id.as_str()), (2, "env1"));
        assert_eq!((b.batch_id.as_str(), b.standings_since), ("env1-1", 5));
        // Still pending: the new counts wait, the batch stays as it was.
        assert_eq!(s.seal(&counted(3), 0), None);
        s.keep_summing_above(&counted(1), MAX_KEYS);
        assert_eq!(s.pending.as_ref(), Some(&first));
        assert!(!s.settle("env1-0"));
        assert!(s.settle("env1-1"));
        assert!(!s.settle("env1-1"), "a second answer settles nothing");
        s.seal(&counted(0), 0);
        assert_eq!(s.pending.as_ref().unwrap().batch_id, "env1-2");
        assert_eq!(summed(&sent(&s))["key_a"].allowed, 4);
        assert!(s.settle("env1-2"));
        // Nothing counted: an empty heartbeat batch, still numbered.
        s.seal(&HandOvers::default(), 0);
        assert_eq!(s.pending.as_ref().unwrap().batch_id, "env1-3");
        assert!(sent(&s).keys.is_empty());
    }

    #[test]
    fn the_report_state_round_trips_and_garbage_reads_as_nothing() {
        let mut s = ReportState::new("18c-7".into());
        s.standings_since = 42;
        s.seal(&counted(2), 0);
        let mut more = Tally::default();
        more.allowed(&"key_a".into(), 1, 10);
        more.denied(None, "invalid_api_key");
        s.keep_summing_above(&drained(&more), MAX_KEYS);
        let bytes = s.to_bytes();
        assert_eq!(ReportState::from_bytes(&bytes), Some(s.clone()));
        s.settle("18c-7-1");
        assert_eq!(ReportState::from_bytes(&s.to_bytes()), Some(s.clone()));
        let cut_from = bytes.len() - s.open.to_bytes().len();
        for cut in 0..bytes.len() {
            if cut != cut_from {
                assert_eq!(ReportState::from_bytes(&bytes[..cut]), None, "{cut} bytes");
            }
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(ReportState::from_bytes(&longer), None);
        assert_eq!(ReportState::from_bytes(b"\x01"), None);
    }
}
