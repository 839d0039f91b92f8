//! Usage reporting: every VM counts, the leader reports.
//!
//! Each VM tallies its decisions in memory (no host call per request) and on
//! every tick hands the tally to the shared queue [`USAGE_QUEUE`] ([`hand_over`]):
//! a tick's worth of requests at most, so the hand-over on a worker's thread
//! grows with its request rate, never with the number of keys counted.
//!
//! The leader ([`Reporter`]) drains the queue every second, or at the next
//! tick while hand-overs wait beyond one batch's bound ([`BATCH_BYTES`]),
//! and seals the next batch into the reporter state in shared data
//! ([`REPORT_KEY`], `tollgate_core::usage::ReportState`) as the very body it
//! sends to `POST /v1/usage` through the control-plane cluster. A hand-over
//! carries its keys as the batch's JSON entries already, so neither draining
//! nor sealing nor storing reads a count: the leader copies bytes. While the
//! control plane does not answer, the leader still drains the queue at every
//! tick into the reporter state, where the counts are summed per key once
//! they pile up, so they take the room of the keys counted however long the
//! wait. Nothing it needs lives only in its VM: a batch keeps its id until
//! the control plane acknowledges it (the control plane counts a batch
//! once, however often it arrives), and counts drained but not yet sealed
//! wait in the same entry. So when the leader goes away, the next one
//! resends the pending batch and carries on. What a VM loses when it dies
//! is the tally it had not handed over yet: one tick of its requests.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::types::LogLevel;
use tollgate_core::layout::{apply_leases, apply_standings, read_leases, REPORT_KEY};
use tollgate_core::store::SetError;
use tollgate_core::usage::{HandOvers, ReportState, Tally, MAX_KEYS};
use tollgate_core::wire::UsageReceipt;

use crate::call::Pacing;
use crate::config::SyncConfig;
use crate::host::{Answer, Call, Host};
use crate::identity;
use crate::metrics::Event;

pub use tollgate_core::layout::USAGE_QUEUE;

/// How often the leader reports. It reports even with nothing to count:
/// the answer carries other Envoys' quota use.
pub const REPORT_EVERY_MS: u64 = 1_000;
const MAX_BACKOFF_MS: u64 = 5_000;
const TIMEOUT_MS: u64 = 5_000;
/// Compare-and-swap attempts on the reporter state within one callback.
const STATE_ATTEMPTS: usize = 8;
/// A write token no present entry has: "create only" in Envoy's terms.
const CREATE_ONLY: u32 = u32::MAX;
/// A batch takes no more hand-overs once it has read this many bytes of
/// them (so it carries at most these and one hand-over's), about 5,000 key
/// entries. The leader drains, seals and stores a batch in one callback on
/// Envoy's main thread, which requests may share a CPU with; that is a few
/// copies of these bytes now, where reading and re-writing every key's
/// counts took about 0.8 µs a key (20k keys, 18 ms in one callback,
/// measured 2026-12-06). What is left waits in the queue for the next
/// batch, sent at the first tick after this one's answer.
pub const BATCH_BYTES: usize = 512 * 1024;
/// Nor once it holds this many key entries.
pub const BATCH_KEYS: usize = 10_000;

/// A VM's tally, shared by its root contexts and its HTTP contexts.
pub type SharedTally = Rc<RefCell<Tally>>;

/// Hands `tally` to the leader through the queue; kept on failure.
pub fn hand_over(host: &impl Host, queue: u32, tally: &SharedTally) {
    let Ok(mut tally) = tally.try_borrow_mut() else {
        return;
    };
    if tally.is_empty() {
        return;
    }
    if host.enqueue(queue, &tally.to_bytes()) {
        tally.clear();
    }
}

/// The reporter state and the token to write it back with.
fn read_state(host: &impl Host, now: u64) -> (ReportState, u32) {
    match host.get(REPORT_KEY) {
        Some((bytes, cas)) => match ReportState::from_bytes(&bytes) {
            Some(state) => (state, cas),
            None => {
                host.log(
                    LogLevel::Error,
                    "tollgate: unreadable usage reporter state replaced; its unacknowledged counts are lost",
                );
                (new_state(host, now), cas)
            }
        },
        None => (new_state(host, now), CREATE_ONLY),
    }
}

/// A new reporter identity: the time and random bits, so a restarted Envoy
/// is a new reporter to the control plane.
fn new_state(host: &impl Host, now: u64) -> ReportState {
    ReportState::new(format!("{now:x}-{:08x}", host.random() as u32))
}

fn write_state(host: &impl Host, state: &ReportState, cas: u32) -> Result<(), SetError> {
    host.set(REPORT_KEY, Some(&state.to_bytes()), Some(cas))
}

/// The leader's side.
#[derive(Debug, Default)]
pub struct Reporter {
    pacing: Pacing,
    /// The batch id of the call in flight.
    in_flight: Option<String>,
    /// When that call left: the leases its answer carries run from then.
    sent_at_ms: u64,
    /// Whether the last drain stopped at [`BATCH_BYTES`] or [`BATCH_KEYS`]:
    /// hand-overs may be waiting, so the next batch goes without waiting
    /// for [`REPORT_EVERY_MS`].
    backlog: bool,
    /// When counts last moved from the queue into the reporter state while
    /// the control plane did not answer ([`Reporter::keep_waiting`]).
    kept_at_ms: u64,
    /// What the counts so moved are summed per key beyond: twice the
    /// entries the last sum left, and at least [`KEPT_SUMMED_ABOVE`].
    kept_summed_above: usize,
}

/// Counts moved into the reporter state while the control plane does not
/// answer are summed per key once they name more than this many entries
/// (at most about 350 KB), or more than twice what the last sum left: so
/// the state each move copies stays within about twice the keys counted,
/// and summing (which reads every count) reads each entry about twice.
const KEPT_SUMMED_ABOVE: usize = 4_096;

impl Reporter {
    /// Forgets the call in flight: this root context no longer leads. The
    /// batch stays pending in shared data for the next leader.
    pub fn resign(&mut self) {
        *self = Self::default();
    }

    pub fn on_tick(&mut self, host: &impl Host, config: &SyncConfig, queue: u32, now: u64) {
        if !self.pacing.due(now, TIMEOUT_MS) {
            // Once a second, as reports go, or at the next tick while the
            // last move left hand-overs beyond a batch's bound: each move
            // copies the whole reporter state, on a thread requests may
            // share a CPU with. At every tick (until 2026-12-07) that was 20
            // copies a second of a state growing all through the outage.
            let due = self.backlog || now >= self.kept_at_ms.saturating_add(REPORT_EVERY_MS);
            if self.pacing.failures() > 0 && due {
                self.kept_at_ms = now;
                self.keep_waiting(host, queue, now);
            }
            return;
        }
        let drained = self.drain(host, queue);
        let mut sent = None;
        let leases_applied = read_leases(host).map_or(0, |f| f.seq);
        for _ in 0..STATE_ATTEMPTS {
            let (mut state, cas) = read_state(host, now);
            let dropped = state.seal(&drained, leases_applied);
            if write_state(host, &state, cas).is_ok() {
                if let Some(n) = dropped {
                    host.stat(Event::UsageDropped(n));
                }
                sent = state.pending;
                break;
            }
        }
        let Some(batch) = sent else {
            // The counts must not be lost: back into the queue for next time.
            if !drained.is_empty() {
                self.requeue(host, queue, &drained.to_bytes());
            }
            host.log(
                LogLevel::Warn,
                "tollgate: cannot store the usage reporter state",
            );
            self.back_off(host, config, now);
            return;
        };
        let identity = identity::headers(host, now);
        let call = Call {
            cluster: &config.cluster,
            method: "POST",
            path: "/v1/usage",
            authority: &config.authority,
            token: &config.token,
            body: Some(&batch.body),
            timeout_ms: TIMEOUT_MS,
            headers: &identity,
        };
        match host.dispatch(&call) {
            Ok(token) => {
                self.pacing.sent(token, now);
                self.in_flight = Some(batch.batch_id);
                self.sent_at_ms = now;
            }
            Err(status) => {
                host.log(
                    LogLevel::Warn,
                    &format!("tollgate: usage dispatch failed: {status}"),
                );
                self.back_off(host, config, now);
            }
        }
    }

    /// Takes hand-overs off the queue, up to one batch's bound.
    fn drain(&mut self, host: &impl Host, queue: u32) -> HandOvers {
        let mut drained = HandOvers::default();
        let mut read = 0;
        self.backlog = false;
        while let Some(bytes) = host.dequeue(queue) {
            let Some(next) = HandOvers::from_bytes(&bytes) else {
                host.log(LogLevel::Error, "tollgate: unreadable usage tally dropped");
                continue;
            };
            // The control plane takes at most MAX_KEYS entries a batch; one
            // hand-over never holds more (a tally's own bound).
            if !drained.is_empty() && drained.entries() + next.entries() > MAX_KEYS {
                self.requeue(host, queue, &bytes);
                self.backlog = true;
                break;
            }
            read += bytes.len();
            drained.append(&next);
            if drained.entries() >= BATCH_KEYS || read >= BATCH_BYTES {
                self.backlog = true;
                break;
            }
        }
        drained
    }

    /// While the control plane does not answer, moves the workers' counts
    /// from the queue into the reporter state once a second (at every tick
    /// while more than a batch's bound waits), where they are summed per
    /// key (`ReportState::keep_summing_above`): in the queue they would
    /// only pile up, a hand-over a tick from every worker.
    fn keep_waiting(&mut self, host: &impl Host, queue: u32, now: u64) {
        let drained = self.drain(host, queue);
        if drained.is_empty() {
            return;
        }
        let above = self.kept_summed_above.max(KEPT_SUMMED_ABOVE);
        for _ in 0..STATE_ATTEMPTS {
            let (mut state, cas) = read_state(host, now);
            let summed = state.keep_summing_above(&drained, above);
            if write_state(host, &state, cas).is_ok() {
                if let Some(entries) = summed {
                    self.kept_summed_above = entries.saturating_mul(2);
                }
                return;
            }
        }
        self.requeue(host, queue, &drained.to_bytes());
    }

    /// Puts hand-over bytes back into the queue, for a later batch.
    fn requeue(&self, host: &impl Host, queue: u32, bytes: &[u8]) {
        if !host.enqueue(queue, bytes) {
            host.log(
                LogLevel::Error,
                "tollgate: cannot keep usage counts: the usage queue is gone",
            );
        }
    }

    fn back_off(&mut self, host: &impl Host, config: &SyncConfig, now: u64) {
        host.stat(Event::UsageReportFailed);
        self.pacing.failed(now, config.retry_ms, MAX_BACKOFF_MS);
    }

    /// Whether `token` answers this reporter's call; if so it is handled.
    pub fn on_answer(
        &mut self,
        host: &impl Host,
        config: &SyncConfig,
        token: u32,
        answer: &Answer,
        now: u64,
    ) -> bool {
        if !self.pacing.answered(token) {
            return false;
        }
        let batch_id = self.in_flight.take().unwrap_or_default();
        match answer.status {
            Some(200) => {
                if self.pacing.failures() > 0 {
                    host.log(LogLevel::Info, "tollgate: usage reports delivered again");
                }
                let (cursor, more) = self.apply_receipt(host, &answer.body);
                self.settle(host, &batch_id, cursor, now);
                // Another page of standings, or more counts, are waiting:
                // report again at the next tick.
                let again = more || self.backlog;
                self.pacing
                    .succeeded(now, if again { 0 } else { REPORT_EVERY_MS });
            }
            // The control plane refused the batch itself: retrying cannot help.
            Some(400 | 413 | 422) => {
                host.log(
                    LogLevel::Error,
                    "tollgate: the control plane refused a usage batch; dropped",
                );
                self.settle(host, &batch_id, None, now);
                host.stat(Event::UsageReportFailed);
                let again = if self.backlog { 0 } else { REPORT_EVERY_MS };
                self.pacing.succeeded(now, again);
            }
            other => {
                if self.pacing.failures() == 0 {
                    let status = other.map_or_else(
                        || "none: control plane unreachable".to_owned(),
                        |s| s.to_string(),
                    );
                    host.log(
                        LogLevel::Warn,
                        &format!(
                            "tollgate: usage report failed (status {status}); keeping the counts"
                        ),
                    );
                }
                self.back_off(host, config, now);
            }
        }
        true
    }

    /// Marks `batch_id` answered in the shared state, and moves the
    /// standings cursor when the receipt gave one.
    fn settle(&self, host: &impl Host, batch_id: &str, cursor: Option<u64>, now: u64) {
        for _ in 0..STATE_ATTEMPTS {
            let (mut state, cas) = read_state(host, now);
            let settled = state.settle(batch_id);
            if let Some(cursor) = cursor {
                // The control plane's cursor, even a lower one: after its
                // database was restored, a higher one would skip standings.
                state.standings_since = cursor;
            }
            if !settled && cursor.is_none() {
                return;
            }
            if write_state(host, &state, cas).is_ok() {
                return;
            }
        }
        host.log(
            LogLevel::Warn,
            "tollgate: cannot record a usage receipt; the batch will be sent again and counted once",
        );
    }

    /// Applies the quota standings of a 200 answer: the new cursor, if they
    /// were applied, and whether more are waiting.
    fn apply_receipt(&self, host: &impl Host, body: &[u8]) -> (Option<u64>, bool) {
        let receipt: UsageReceipt = match tollgate_core::json::from_slice(body) {
            Ok(receipt) => receipt,
            Err(e) => {
                host.log(
                    LogLevel::Warn,
                    &format!("tollgate: unreadable usage receipt, standings not updated: {e}"),
                );
                return (None, false);
            }
        };
        if let Some(leases) = &receipt.leases {
            // Not stored, not acknowledged: the next receipt carries them again.
            if let Err(e) = apply_leases(host, leases, self.sent_at_ms) {
                host.log(
                    LogLevel::Warn,
                    &format!("tollgate: cannot store fleet leases: {e}"),
                );
            }
        }
        match apply_standings(host, &receipt.standings) {
            Ok(_) => (Some(receipt.cursor), receipt.more),
            Err(e) => {
                host.log(
                    LogLevel::Warn,
                    &format!("tollgate: cannot store quota standings: {e}"),
                );
                (None, false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{config, FakeHost, Sent, QUEUE};
    use std::collections::BTreeMap;
    use tollgate_core::store::SharedStore;
    use tollgate_core::wire::UsageBatch;

    const T0: u64 = 1_700_000_000_000;

    fn batch(sent: &Sent) -> UsageBatch {
        assert_eq!(
            (sent.method.as_str(), sent.path.as_str()),
            ("POST", "/v1/usage")
        );
        serde_json::from_slice(&sent.body).unwrap()
    }

    fn ok() -> Answer {
        Answer {
            status: Some(200),
            body: br#"{"standings":[],"cursor":0,"more":false}"#.to_vec(),
        }
    }

    /// A VM counting `n` requests of `key` and handing them over.
    fn counted(host: &FakeHost, key: &str, n: u64) {
        let tally = SharedTally::default();
        for _ in 0..n {
            tally.borrow_mut().allowed(&key.into(), 1, T0);
        }
        hand_over(host, QUEUE, &tally);
        assert!(tally.borrow().is_empty());
    }

    /// What the control plane counts: each batch id once.
    #[derive(Default)]
    struct Ledger {
        seen: BTreeMap<String, UsageBatch>,
    }

    impl Ledger {
        fn receive(&mut self, b: UsageBatch) {
            self.seen.entry(b.batch_id.clone()).or_insert(b);
        }

        fn allowed(&self, key: &str) -> u64 {
            self.seen
                .values()
                .flat_map(|b| &b.keys)
                .filter(|k| k.key_id == key)
                .map(|k| k.allowed)
                .sum()
        }
    }

    #[test]
    fn handed_over_counts_are_reported_once_and_acknowledged() {
        let host = FakeHost::new();
        let c = config();
        let mut r = Reporter::default();
        counted(&host, "key_a", 3);
        counted(&host, "key_a", 2);
        r.on_tick(&host, &c, QUEUE, T0);
        let sent = host.take_sent();
        let b = batch(&sent[0]);
        // One entry per hand-over; the control plane sums them.
        assert_eq!(b.keys.iter().map(|k| k.allowed).collect::<Vec<_>>(), [3, 2]);
        assert!(b.keys.iter().all(|k| k.key_id == "key_a"));
        assert_eq!(b.reporter_id, "18bcfe56800-feedbeef");
        assert_eq!(b.batch_id, format!("{}-1", b.reporter_id));
        assert!(r.on_answer(&host, &c, sent[0].token, &ok(), T0 + 5));
        let (state, _) = read_state(&host, T0);
        assert_eq!(state.pending, None);
        // Next report a second later, numbered on.
        r.on_tick(&host, &c, QUEUE, T0 + 5 + REPORT_EVERY_MS - 1);
        assert!(host.take_sent().is_empty());
        r.on_tick(&host, &c, QUEUE, T0 + 5 + REPORT_EVERY_MS);
        assert!(batch(&host.take_sent()[0]).batch_id.ends_with("-2"));
    }

    #[test]
    fn a_burst_of_keys_goes_in_bounded_batches_one_tick_apart_and_nothing_is_lost() {
        let host = FakeHost::new();
        let c = config();
        let mut r = Reporter::default();
        let mut ledger = Ledger::default();
        // Twenty hand-overs of 1,000 new keys each: 20,000 keys.
        let key = |i: usize| format!("key_{i:0>5}");
        let mut hand_over_bytes = 0;
        for part in 0..20 {
            let tally = SharedTally::default();
            for i in part * 1_000..(part + 1) * 1_000 {
                tally.borrow_mut().allowed(&key(i).into(), 1, T0);
            }
            hand_over_bytes = tally.borrow().to_bytes().len();
            hand_over(&host, QUEUE, &tally);
        }
        let mut now = T0;
        let mut sizes = Vec::new();
        let mut answered = 0;
        for _ in 0..10 {
            r.on_tick(&host, &c, QUEUE, now);
            for s in host.take_sent() {
                let b = batch(&s);
                sizes.push(b.keys.len());
                ledger.receive(b);
                answered = now + 5;
                assert!(r.on_answer(&host, &c, s.token, &ok(), answered));
            }
            now += 50;
        }
        // Drained up to the hand-over that reaches a bound, each batch at
        // the tick after the last one's answer; the queue empty, the usual
        // second's wait.
        let per_batch = BATCH_BYTES
            .div_ceil(hand_over_bytes)
            .min(BATCH_KEYS.div_ceil(1_000));
        assert!(per_batch < 20, "the bounds are met: {per_batch}");
        let expected: Vec<usize> = (0..20)
            .collect::<Vec<_>>()
            .chunks(per_batch)
            .map(|c| c.len() * 1_000)
            .collect();
        assert_eq!(sizes, expected);
        assert!((0..20_000).all(|i| ledger.allowed(&key(i)) == 1));
        r.on_tick(&host, &c, QUEUE, answered + REPORT_EVERY_MS - 1);
        assert!(host.take_sent().is_empty());
        r.on_tick(&host, &c, QUEUE, answered + REPORT_EVERY_MS);
        assert_eq!(host.take_sent().len(), 1);
    }

    #[test]
    fn leases_in_a_receipt_run_from_the_report_and_the_next_batch_acknowledges_them() {
        use tollgate_core::layout::{buckets_key, read_leases, BucketEntry};
        let host = FakeHost::new();
        let c = config();
        let mut r = Reporter::default();
        r.on_tick(&host, &c, QUEUE, T0);
        let sent = host.take_sent();
        assert_eq!(batch(&sent[0]).leases_applied, 0);
        let hash = tollgate_core::key::KeyHash::of(b"k");
        let receipt = format!(
            r#"{{"standings":[],"cursor":0,"leases":{{"generation":5,"seq":41,"valid_ms":10000,
                "default_share":1000,"grants":[{{"key_hash":"{}","share":700}}]}}}}"#,
            hash.to_hex()
        );
        let answer = Answer {
            status: Some(200),
            body: receipt.into_bytes(),
        };
        // Answered 300 ms after the report left: valid 10 s from the report.
        assert!(r.on_answer(&host, &c, sent[0].token, &answer, T0 + 300));
        let terms = read_leases(&host).unwrap();
        assert_eq!((terms.seq, terms.terms.valid_until_ms), (41, T0 + 10_000));
        assert_eq!(terms.terms.default_share, 1000);
        let (bytes, _) = host.get(&buckets_key(&hash)).unwrap();
        let lease = BucketEntry::decode(&bytes).lease.unwrap();
        assert_eq!((lease.share, lease.generation), (700, 5));
        r.on_tick(&host, &c, QUEUE, T0 + 300 + REPORT_EVERY_MS);
        assert_eq!(batch(&host.take_sent()[0]).leases_applied, 41);
    }

    #[test]
    fn while_the_control_plane_is_away_the_batch_keeps_its_id_and_counts_wait() {
        let host = FakeHost::new();
        let c = config();
        let mut r = Reporter::default();
        let mut ledger = Ledger::default();
        counted(&host, "key_a", 4);
        r.on_tick(&host, &c, QUEUE, T0);
        let first = host.take_sent().remove(0);
        let id = batch(&first).batch_id;
        r.on_answer(&host, &c, first.token, &Answer::default(), T0 + 1);
        counted(&host, "key_a", 6);
        let mut now = T0 + 1;
        let mut retries = 0;
        while retries < 3 {
            now += 100;
            r.on_tick(&host, &c, QUEUE, now);
            for s in host.take_sent() {
                let b = batch(&s);
                assert_eq!((b.batch_id.as_str(), b.keys[0].allowed), (id.as_str(), 4));
                r.on_answer(&host, &c, s.token, &refused(), now);
                retries += 1;
            }
        }
        // Back: the same batch, counted; then the 6 that waited.
        back(&host, &c, &mut r, &mut ledger, now);
        assert_eq!(ledger.allowed("key_a"), 10);
        assert!(host.queues.borrow()[&QUEUE].is_empty());
    }

    /// The control plane refusing the first report: the reporter waits. Returns the time.
    fn away(host: &FakeHost, c: &SyncConfig, r: &mut Reporter) -> u64 {
        r.on_tick(host, c, QUEUE, T0);
        let first = host.take_sent().remove(0);
        r.on_answer(host, c, first.token, &refused(), T0 + 1);
        T0 + 1
    }

    fn refused() -> Answer {
        Answer {
            status: Some(503),
            body: vec![],
        }
    }

    /// A tick at `now`, every report it sends refused.
    fn tick_refused(host: &FakeHost, c: &SyncConfig, r: &mut Reporter, now: u64) {
        r.on_tick(host, c, QUEUE, now);
        for s in host.take_sent() {
            r.on_answer(host, c, s.token, &refused(), now);
        }
    }

    /// The control plane back from `now`: 20 s of ticks, every report counted.
    fn back(host: &FakeHost, c: &SyncConfig, r: &mut Reporter, ledger: &mut Ledger, mut now: u64) {
        for _ in 0..400 {
            now += 50;
            r.on_tick(host, c, QUEUE, now);
            for s in host.take_sent() {
                ledger.receive(batch(&s));
                r.on_answer(host, c, s.token, &ok(), now);
            }
        }
    }

    #[test]
    fn while_the_control_plane_does_not_answer_counts_leave_the_queue_once_a_second_and_add_up() {
        let host = FakeHost::new();
        let c = config();
        let mut r = Reporter::default();
        let mut ledger = Ledger::default();
        counted(&host, "key_a", 1);
        let mut now = away(&host, &c, &mut r);
        // Ten seconds of ticks, each with two hand-overs and every attempt
        // refused: no more than a second's hand-overs wait in the queue,
        // and the reporter state is written once a second and at each
        // attempt (at 250 ms, doubling to 5 s), not at every tick.
        let writes = || host.get(REPORT_KEY).map_or(0, |(_, cas)| cas);
        let written_before = writes();
        for _ in 0..200 {
            now += 50;
            counted(&host, "key_a", 1);
            counted(&host, "key_b", 2);
            tick_refused(&host, &c, &mut r, now);
            assert!(host.queues.borrow()[&QUEUE].len() <= 2 * 20);
        }
        let written = writes() - written_before;
        assert!((10..=20).contains(&written), "{written} writes in 10 s");
        // Back: everything arrives, once.
        back(&host, &c, &mut r, &mut ledger, now);
        assert_eq!(
            (ledger.allowed("key_a"), ledger.allowed("key_b")),
            (201, 400)
        );
    }

    #[test]
    fn a_long_wait_keeps_the_reporter_state_near_the_keys_counted() {
        let host = FakeHost::new();
        let c = config();
        let mut r = Reporter::default();
        let mut ledger = Ledger::default();
        let mut now = away(&host, &c, &mut r);
        // A minute away, each tick a hand-over naming 50 keys: 60,000
        // entries, which unsummed would make every move copy megabytes.
        let keys: Vec<String> = (0..50).map(|i| format!("key_{i:02}")).collect();
        let tally = SharedTally::default();
        let mut largest = 0;
        for _ in 0..1_200 {
            now += 50;
            for key in &keys {
                tally.borrow_mut().allowed(&key.as_str().into(), 1, T0);
            }
            hand_over(&host, QUEUE, &tally);
            tick_refused(&host, &c, &mut r, now);
            largest = largest.max(host.get(REPORT_KEY).map_or(0, |(b, _)| b.len()));
        }
        // Each entry is about 40 bytes: the state held at most about twice
        // the floor's entries and a second's hand-overs, never the minute's.
        assert!(largest < 400_000, "the state reached {largest} bytes");
        back(&host, &c, &mut r, &mut ledger, now);
        for key in &keys {
            assert_eq!(ledger.allowed(key), 1_200, "{key}");
        }
    }

    #[test]
    fn past_max_keys_a_long_wait_sums_when_the_kept_entries_double_not_at_every_move() {
        let host = FakeHost::new();
        let c = config();
        let mut r = Reporter::default();
        let mut now = away(&host, &c, &mut r);
        // Every tick 2,000 keys never counted before: past MAX_KEYS a sum
        // leaves MAX_KEYS entries (the rest dropped, and counted so), so
        // one asked for past MAX_KEYS would read them all at every move.
        let tally = SharedTally::default();
        let mut next_key = 0u32;
        let (mut kept, mut sums_past_max) = (0, 0);
        for _ in 0..120 {
            now += 1_000;
            for _ in 0..2_000 {
                next_key += 1;
                tally
                    .borrow_mut()
                    .allowed(&format!("key_{next_key}").as_str().into(), 1, T0);
            }
            hand_over(&host, QUEUE, &tally);
            tick_refused(&host, &c, &mut r, now);
            let state = read_state(&host, now).0;
            if state.kept_entries() < kept {
                sums_past_max += 1;
            }
            kept = state.kept_entries();
            assert!(kept <= 2 * MAX_KEYS + 2_000, "{kept} entries kept");
        }
        assert_eq!(next_key, 240_000);
        assert!(
            (1..=2).contains(&sums_past_max),
            "{sums_past_max} sums past MAX_KEYS"
        );
    }

    #[test]
    fn a_new_leader_resends_the_pending_batch_under_its_id_and_nothing_counts_twice() {
        let host = FakeHost::new();
        let c = config();
        let mut ledger = Ledger::default();
        let (mut old, mut new) = (Reporter::default(), Reporter::default());
        counted(&host, "key_a", 7);
        old.on_tick(&host, &c, QUEUE, T0);
        let lost = host.take_sent().remove(0);
        // The control plane counted it, but the leader went away before the
        // answer came (its root context replaced): the answer is never seen.
        ledger.receive(batch(&lost));
        old.resign();
        counted(&host, "key_a", 2);
        new.on_tick(&host, &c, QUEUE, T0 + 2_000);
        let resent = host.take_sent().remove(0);
        assert_eq!(batch(&resent).batch_id, batch(&lost).batch_id);
        ledger.receive(batch(&resent));
        new.on_answer(&host, &c, resent.token, &ok(), T0 + 2_001);
        // The old leader's late answer changes nothing.
        assert!(!old.on_answer(&host, &c, lost.token, &ok(), T0 + 2_002));
        new.on_tick(&host, &c, QUEUE, T0 + 3_001);
        let next = host.take_sent().remove(0);
        ledger.receive(batch(&next));
        assert_eq!(ledger.allowed("key_a"), 9);
        assert_eq!(ledger.seen.len(), 2);
        // The reporter identity carried over: its quota standings stay right.
        assert_eq!(batch(&next).reporter_id, batch(&lost).reporter_id);
    }

    #[test]
    fn a_batch_the_control_plane_refuses_is_dropped_and_the_next_one_goes() {
        let host = FakeHost::new();
        let c = config();
        let mut r = Reporter::default();
        counted(&host, "key_a", 1);
        r.on_tick(&host, &c, QUEUE, T0);
        let s = host.take_sent().remove(0);
        r.on_answer(
            &host,
            &c,
            s.token,
            &Answer {
                status: Some(422),
                body: vec![],
            },
            T0,
        );
        assert_eq!(read_state(&host, T0).0.pending, None);
        counted(&host, "key_a", 1);
        r.on_tick(&host, &c, QUEUE, T0 + REPORT_EVERY_MS);
        assert!(batch(&host.take_sent()[0]).batch_id.ends_with("-2"));
    }

    #[test]
    fn counts_survive_a_state_that_cannot_be_written() {
        let host = FakeHost::new();
        let c = config();
        let mut r = Reporter::default();
        counted(&host, "key_a", 3);
        // Every compare-and-swap on the state loses this tick.
        host.set(
            REPORT_KEY,
            Some(&ReportState::new("x".into()).to_bytes()),
            None,
        )
        .unwrap();
        host.store.inject_cas_conflicts(STATE_ATTEMPTS as u32);
        r.on_tick(&host, &c, QUEUE, T0);
        assert!(host.take_sent().is_empty());
        assert_eq!(host.queues.borrow()[&QUEUE].len(), 1, "back in the queue");
        r.on_tick(&host, &c, QUEUE, T0 + 10_000);
        let b = batch(&host.take_sent()[0]);
        assert_eq!((b.reporter_id.as_str(), b.keys[0].allowed), ("x", 3));
    }

    #[test]
    fn quota_standings_move_the_cursor_and_more_asks_again_at_once() {
        let host = FakeHost::new();
        let c = config();
        let mut r = Reporter::default();
        r.on_tick(&host, &c, QUEUE, T0);
        let s = host.take_sent().remove(0);
        let hash = tollgate_core::key::KeyHash::of(b"k").to_hex();
        let receipt = format!(
            r#"{{"standings":[{{"key_hash":"{hash}","period_start_ms":{T0},"others_used":4}}],"cursor":17,"more":true}}"#
        );
        let answer = Answer {
            status: Some(200),
            body: receipt.into_bytes(),
        };
        r.on_answer(&host, &c, s.token, &answer, T0 + 1);
        assert_eq!(read_state(&host, T0).0.standings_since, 17);
        r.on_tick(&host, &c, QUEUE, T0 + 2);
        let b = batch(&host.take_sent()[0]);
        assert_eq!(b.standings_since, 17);
    }
}
