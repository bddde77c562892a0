//! The deciding half of hinted handoff: which hints to send to which owner,
//! when, and which to drop. Pure: it reads hints handed to it and the time it
//! is told, and returns a [`Plan`]; the server sends the batch and applies
//! the deletions through the [`HintStore`](super::HintStore).
//!
//! - **Only to an owner gossip reports `Up`.** `Suspect` may be a node that is
//!   dying; handing off to it would just fail and retry.
//! - **One batch in flight per owner.** The next batch for an owner is planned
//!   only after the previous one was acknowledged, failed, or timed out
//!   (`ack_timeout`), so hints are not sent twice while an ack is on its way,
//!   and a slow owner is not flooded.
//! - **Throttled by a token bucket** shared by all owners: `bytes_per_sec`
//!   refills it, up to one second's worth (the burst). A batch takes at most
//!   what the bucket holds, so in `t` seconds at most `bytes_per_sec * (t +
//!   1)` bytes are planned. A single hint larger than the whole burst still
//!   goes when the bucket is full (it leaves the bucket in debt, paid off
//!   before anything else goes), otherwise it could never be sent; the bound
//!   is then `bytes_per_sec * t` plus that hint (a proptest checks both). Handoff competes with client
//!   traffic for disk and network, and the target is a client p99
//!   during replay of at most twice the quiet value.
//! - **Expiry while scanning.** Hints older than the window met while building
//!   a batch are listed for dropping instead of being sent.

use std::collections::HashMap;
use std::time::Duration;

use super::{CorruptHint, Hint, HintPosition, HintRef};
use crate::cluster::membership::Status;
use crate::cluster::ring::NodeId;
use crate::error::{Error, Result};

/// Settings of hinted handoff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandoffConfig {
    /// Bytes per second of hints a node may send, all owners together; 0
    /// means unlimited. Default: 4 MiB/s.
    pub bytes_per_sec: u64,
    /// Largest batch, in bytes (one batch is one round trip). Default: 256 KiB.
    pub max_batch_bytes: u64,
    /// Hints older than this are dropped, and anti-entropy repairs their keys.
    /// Default: 3 h.
    pub window: Duration,
    /// A batch not acknowledged within this is considered lost and its hints
    /// may be sent again. Default: 30 s.
    pub ack_timeout: Duration,
}

impl Default for HandoffConfig {
    fn default() -> Self {
        HandoffConfig {
            bytes_per_sec: 4 << 20,
            max_batch_bytes: 256 << 10,
            window: Duration::from_secs(3 * 3600),
            ack_timeout: Duration::from_secs(30),
        }
    }
}

impl HandoffConfig {
    /// Reject settings that would make handoff never progress.
    pub fn validate(&self) -> Result<()> {
        if self.max_batch_bytes == 0 {
            return Err(Error::invalid("hint max_batch_bytes must be at least 1"));
        }
        if self.window.is_zero() {
            return Err(Error::invalid("hint window must be longer than 0"));
        }
        if self.ack_timeout.is_zero() {
            return Err(Error::invalid("hint ack_timeout must be longer than 0"));
        }
        Ok(())
    }
}

/// Whether a hint created at `created_at_ms` is past a window of `window_ms`
/// at `now_ms`.
pub fn is_expired(created_at_ms: u64, now_ms: u64, window_ms: u64) -> bool {
    now_ms.saturating_sub(created_at_ms) > window_ms
}

/// A token bucket over bytes, driven by the time it is given.
///
/// Tokens are kept in thousandths of a byte so that refills at any rate and
/// any tick length add up exactly (no rounding lost per tick).
#[derive(Clone, Debug)]
pub struct Throttle {
    bytes_per_sec: u64,
    /// In thousandths of a byte; negative after an oversized send (debt).
    tokens_milli: i128,
    last_ms: Option<u64>,
}

impl Throttle {
    /// A bucket refilled at `bytes_per_sec` (0: unlimited), starting full.
    pub fn new(bytes_per_sec: u64) -> Throttle {
        Throttle {
            bytes_per_sec,
            tokens_milli: Self::capacity_milli(bytes_per_sec),
            last_ms: None,
        }
    }

    fn capacity_milli(bytes_per_sec: u64) -> i128 {
        i128::from(bytes_per_sec) * 1000
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = match self.last_ms {
            Some(last) => now_ms.saturating_sub(last),
            None => 0,
        };
        self.last_ms = Some(self.last_ms.map_or(now_ms, |last| last.max(now_ms)));
        // bytes/s * ms = thousandths of a byte.
        let added = i128::from(elapsed) * i128::from(self.bytes_per_sec);
        self.tokens_milli =
            (self.tokens_milli + added).min(Self::capacity_milli(self.bytes_per_sec));
    }

    /// Whole bytes available at `now_ms` (`u64::MAX` when unlimited).
    pub fn available(&mut self, now_ms: u64) -> u64 {
        if self.bytes_per_sec == 0 {
            return u64::MAX;
        }
        self.refill(now_ms);
        u64::try_from(self.tokens_milli.max(0) / 1000).unwrap_or(u64::MAX)
    }

    /// Whether the bucket is full at `now_ms` (an oversized send may go).
    pub fn is_full(&mut self, now_ms: u64) -> bool {
        if self.bytes_per_sec == 0 {
            return true;
        }
        self.refill(now_ms);
        self.tokens_milli >= Self::capacity_milli(self.bytes_per_sec)
    }

    /// Take `bytes` (may leave the bucket in debt).
    pub fn take(&mut self, bytes: u64) {
        if self.bytes_per_sec != 0 {
            self.tokens_milli -= i128::from(bytes) * 1000;
        }
    }

    /// Milliseconds until at least `bytes` are available (0 if they are).
    pub fn wait_ms(&self, bytes: u64) -> u64 {
        if self.bytes_per_sec == 0 {
            return 0;
        }
        let want = (i128::from(bytes) * 1000).min(Self::capacity_milli(self.bytes_per_sec));
        let missing = want - self.tokens_milli;
        if missing <= 0 {
            return 0;
        }
        let rate = i128::from(self.bytes_per_sec);
        u64::try_from((missing + rate - 1) / rate).unwrap_or(u64::MAX)
    }
}

/// Identifies one planned batch, to match its ack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId(pub u64);

/// Hints to send to one owner in one round trip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HintBatch {
    pub id: BatchId,
    pub target: NodeId,
    pub hints: Vec<Hint>,
    /// Sum of the hints' stored bytes (what the throttle charged).
    pub bytes: u64,
}

/// What to do now for one owner.
#[derive(Debug, Default)]
pub struct Plan {
    /// Hints to send, if any.
    pub send: Option<HintBatch>,
    /// Hints past the window: drop them ([`HintStore::drop_expired`](super::HintStore::drop_expired)).
    pub expired: Vec<HintRef>,
    /// Records that failed their checks: quarantine them
    /// ([`HintStore::quarantine`](super::HintStore::quarantine)).
    pub corrupt: Vec<CorruptHint>,
    /// Poll this owner again after this many ms: the throttle is empty, or a
    /// batch is in flight. `None`: nothing left to send (or the owner is not
    /// `Up`), poll again when something changes.
    pub retry_after_ms: Option<u64>,
}

#[derive(Clone, Debug)]
struct InFlight {
    id: BatchId,
    sent_at_ms: u64,
    refs: Vec<HintRef>,
    /// Where the scan resumed before this batch: restored if it is lost.
    cursor_before: Option<HintPosition>,
}

/// Plans hint replay for every owner (see the module doc).
#[derive(Debug)]
pub struct HandoffPlanner {
    config: HandoffConfig,
    throttle: Throttle,
    in_flight: HashMap<NodeId, InFlight>,
    /// Per owner, the last hint sent: the next scan starts after it.
    cursors: HashMap<NodeId, HintPosition>,
    next_batch: u64,
}

impl HandoffPlanner {
    pub fn new(config: HandoffConfig) -> HandoffPlanner {
        HandoffPlanner {
            throttle: Throttle::new(config.bytes_per_sec),
            config,
            in_flight: HashMap::new(),
            cursors: HashMap::new(),
            next_batch: 1,
        }
    }

    pub fn config(&self) -> &HandoffConfig {
        &self.config
    }

    /// Where the next scan of `target`'s hints must start (strictly after
    /// this position; `None`: from the beginning). Pass it to
    /// [`HintStore::hints_for_after`](super::HintStore::hints_for_after) to
    /// get the `hints` of [`poll`](Self::poll).
    pub fn resume_after(&self, target: NodeId) -> Option<&HintPosition> {
        self.cursors.get(&target)
    }

    /// Decide what to send `target` now. `status` is gossip's view of it;
    /// `hints` are its pending hints in store order, starting after
    /// [`resume_after`](Self::resume_after) (pulled lazily: only as many as
    /// fit in the batch are read). When a scan from a resume point finds
    /// nothing, the planner wraps to the beginning and asks to be polled
    /// again at once (`retry_after_ms == Some(0)`): hints kept on an ack
    /// because they changed since they were sent lie behind the cursor.
    pub fn poll<I>(&mut self, target: NodeId, status: Status, now_ms: u64, hints: I) -> Plan
    where
        I: IntoIterator<Item = std::result::Result<Hint, CorruptHint>>,
    {
        let mut plan = Plan::default();
        if status != Status::Up {
            // Whatever was in flight will not be acknowledged by a node that
            // went away; resend everything once it is back.
            self.in_flight.remove(&target);
            self.cursors.remove(&target);
            return plan;
        }
        if let Some(flight) = self.in_flight.get(&target) {
            let timeout = duration_ms(self.config.ack_timeout);
            let deadline = flight.sent_at_ms.saturating_add(timeout);
            if now_ms < deadline {
                plan.retry_after_ms = Some(deadline - now_ms);
                return plan;
            }
            tracing::debug!(target_node = %target, batch = flight.id.0, "hint batch ack timed out; resending");
            self.lose_in_flight(target);
        }

        let window_ms = duration_ms(self.config.window);
        let available = self.throttle.available(now_ms);
        let budget = available.min(self.config.max_batch_bytes);
        let may_oversize = self.throttle.is_full(now_ms);
        let mut batch: Vec<Hint> = Vec::new();
        let mut bytes = 0u64;
        let mut blocked_on: Option<u64> = None;
        let mut seen_any = false;
        for item in hints {
            seen_any = true;
            let hint = match item {
                Ok(hint) => hint,
                Err(bad) => {
                    plan.corrupt.push(bad);
                    continue;
                }
            };
            if is_expired(hint.created_at_ms, now_ms, window_ms) {
                plan.expired.push(hint.to_ref());
                continue;
            }
            let fits = bytes.saturating_add(hint.stored_bytes) <= budget;
            let oversized_alone = batch.is_empty() && may_oversize;
            if fits || oversized_alone {
                bytes = bytes.saturating_add(hint.stored_bytes);
                batch.push(hint);
                if oversized_alone && !fits {
                    break;
                }
            } else {
                blocked_on = Some(hint.stored_bytes);
                break;
            }
        }
        if let Some(next) = blocked_on {
            if batch.is_empty() {
                // Nothing fits yet: wait for the bucket to refill enough.
                plan.retry_after_ms = Some(self.throttle.wait_ms(next).max(1));
            }
        }
        if !seen_any && self.cursors.remove(&target).is_some() {
            plan.retry_after_ms = Some(0);
        }
        if batch.is_empty() {
            return plan;
        }
        self.throttle.take(bytes);
        let cursor_before = match batch.last() {
            Some(last) => self.cursors.insert(target, last.position()),
            None => self.cursors.get(&target).cloned(),
        };
        let id = BatchId(self.next_batch);
        self.next_batch += 1;
        self.in_flight.insert(
            target,
            InFlight {
                id,
                sent_at_ms: now_ms,
                refs: batch.iter().map(Hint::to_ref).collect(),
                cursor_before,
            },
        );
        plan.retry_after_ms = Some(duration_ms(self.config.ack_timeout));
        plan.send = Some(HintBatch {
            id,
            target,
            hints: batch,
            bytes,
        });
        plan
    }

    /// `target` acknowledged batch `id`: the hints to compare-and-delete
    /// ([`HintStore::acknowledge`](super::HintStore::acknowledge)). `None`
    /// for an ack that matches nothing in flight (late, or duplicated).
    pub fn on_ack(&mut self, target: NodeId, id: BatchId) -> Option<Vec<HintRef>> {
        match self.in_flight.get(&target) {
            Some(flight) if flight.id == id => self.in_flight.remove(&target).map(|f| f.refs),
            _ => None,
        }
    }

    /// Sending batch `id` to `target` failed (error reply, lost connection):
    /// its hints stay and go again at the next poll.
    pub fn on_failure(&mut self, target: NodeId, id: BatchId) {
        if self.in_flight.get(&target).is_some_and(|f| f.id == id) {
            self.lose_in_flight(target);
        }
    }

    /// Forget the batch in flight to `target` and rewind the cursor so its
    /// hints are scanned (and sent) again.
    fn lose_in_flight(&mut self, target: NodeId) {
        if let Some(flight) = self.in_flight.remove(&target) {
            match flight.cursor_before {
                Some(cursor) => self.cursors.insert(target, cursor),
                None => self.cursors.remove(&target),
            };
        }
    }

    /// Whether a batch for `target` awaits its ack.
    pub fn in_flight(&self, target: NodeId) -> bool {
        self.in_flight.contains_key(&target)
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::cluster::hints::HintSeq;
    use crate::cluster::ring::PartitionId;
    use crate::version::SiblingSet;

    fn node(n: u8) -> NodeId {
        NodeId::from_bytes([n; 16])
    }

    fn hint(target: NodeId, i: u64, bytes: u64, created_at_ms: u64) -> Hint {
        Hint {
            target,
            partition: PartitionId(0),
            key: Bytes::from(format!("k{i:06}")),
            siblings: SiblingSet::new(),
            created_at_ms,
            seq: HintSeq(i),
            stored_bytes: bytes,
        }
    }

    fn hints(
        target: NodeId,
        n: u64,
        bytes: u64,
        created_at_ms: u64,
    ) -> Vec<std::result::Result<Hint, CorruptHint>> {
        (0..n)
            .map(|i| Ok(hint(target, i, bytes, created_at_ms)))
            .collect()
    }

    fn config(bytes_per_sec: u64) -> HandoffConfig {
        HandoffConfig {
            bytes_per_sec,
            max_batch_bytes: 1 << 20,
            ..HandoffConfig::default()
        }
    }

    #[test]
    fn throttle_refills_at_the_configured_rate_without_rounding_loss() {
        let mut t = Throttle::new(1000);
        assert_eq!(t.available(0), 1000, "starts full");
        t.take(1000);
        // 1 ms ticks at 1000 B/s add exactly one byte each.
        for ms in 1..=250 {
            assert_eq!(t.available(ms), ms);
        }
        // 3 B/s: 1/3 byte per 111 ms tick must still add up.
        let mut slow = Throttle::new(3);
        assert_eq!(slow.available(0), 3);
        slow.take(3);
        for tick in 1..=9 {
            slow.available(tick * 111);
        }
        assert_eq!(slow.available(999), 2);
        assert_eq!(slow.available(1000), 3);
        assert_eq!(slow.available(5000), 3, "never above the burst");
    }

    #[test]
    fn throttle_yields_the_byte_budget_per_second() {
        let target = node(1);
        let mut planner = HandoffPlanner::new(config(10_000));
        let pending: Vec<Hint> = (0..10_000).map(|i| hint(target, i, 100, 0)).collect();
        let mut cursor = 0usize;
        let mut sent = 0u64;
        let mut now = 0u64;
        // Ten simulated seconds, polled every 10 ms, acking each batch at once.
        while now <= 10_000 {
            let plan = planner.poll(
                target,
                Status::Up,
                now,
                pending[cursor..].iter().cloned().map(Ok),
            );
            if let Some(batch) = plan.send {
                cursor += batch.hints.len();
                sent += batch.bytes;
                assert!(planner.on_ack(target, batch.id).is_some());
            }
            now += 10;
        }
        // 10 s at 10 kB/s plus the initial full bucket (one second's burst).
        assert!(sent <= 110_000, "sent {sent}");
        assert!(
            sent >= 100_000,
            "sent {sent}: the throttle held back too much"
        );
    }

    #[test]
    fn nothing_is_planned_for_an_owner_that_is_not_up() {
        let target = node(2);
        let mut planner = HandoffPlanner::new(config(0));
        for status in [Status::Suspect, Status::Down, Status::Left] {
            let plan = planner.poll(target, status, 0, hints(target, 3, 10, 0));
            assert!(plan.send.is_none() && plan.retry_after_ms.is_none());
        }
        let plan = planner.poll(target, Status::Up, 0, hints(target, 3, 10, 0));
        assert_eq!(plan.send.map(|b| b.hints.len()), Some(3));
    }

    #[test]
    fn one_batch_in_flight_per_owner_until_ack_or_timeout() {
        let target = node(3);
        let mut planner = HandoffPlanner::new(config(0));
        let first = planner
            .poll(target, Status::Up, 0, hints(target, 2, 10, 0))
            .send
            .map(|b| b.id);
        assert!(first.is_some());
        let again = planner.poll(target, Status::Up, 1_000, hints(target, 2, 10, 0));
        assert!(
            again.send.is_none(),
            "no second batch while one is in flight"
        );
        assert_eq!(again.retry_after_ms, Some(29_000));
        // A late ack of an unknown batch changes nothing.
        assert!(planner.on_ack(target, BatchId(999)).is_none());
        assert!(planner.in_flight(target));
        // After the ack timeout the same hints go again.
        let resent = planner.poll(target, Status::Up, 30_000, hints(target, 2, 10, 0));
        let resent = resent.send.map(|b| b.id);
        assert!(resent.is_some() && resent != first);
        // The stale first batch's ack does not clear the new one.
        assert!(first.is_some_and(|id| planner.on_ack(target, id).is_none()));
    }

    #[test]
    fn ack_returns_exactly_the_refs_sent() {
        let target = node(4);
        let mut planner = HandoffPlanner::new(config(0));
        let batch = planner
            .poll(target, Status::Up, 0, hints(target, 5, 10, 0))
            .send;
        let Some(batch) = batch else {
            panic!("a batch was expected");
        };
        let refs: Vec<HintRef> = batch.hints.iter().map(Hint::to_ref).collect();
        assert_eq!(planner.on_ack(target, batch.id), Some(refs));
        assert!(!planner.in_flight(target));
    }

    #[test]
    fn hints_past_the_window_are_listed_for_dropping_not_sent() {
        let target = node(5);
        let mut planner = HandoffPlanner::new(config(0));
        let window_ms = 3 * 3600 * 1000;
        let now = window_ms + 10_000;
        let mut pending = hints(target, 3, 10, 0); // created at 0: expired
        pending.extend((3..5).map(|i| Ok(hint(target, i, 10, now - 5))));
        let plan = planner.poll(target, Status::Up, now, pending);
        assert_eq!(plan.expired.len(), 3);
        assert_eq!(plan.send.map(|b| b.hints.len()), Some(2));
    }

    #[test]
    fn a_hint_larger_than_the_burst_goes_alone_when_the_bucket_is_full() {
        let target = node(6);
        let mut planner = HandoffPlanner::new(config(100));
        let plan = planner.poll(target, Status::Up, 0, hints(target, 2, 500, 0));
        let batch = plan.send.map(|b| (b.hints.len(), b.id));
        assert_eq!(batch.map(|b| b.0), Some(1));
        if let Some((_, id)) = batch {
            planner.on_ack(target, id);
        }
        // The bucket is now 400 bytes in debt: nothing until it is full again.
        let plan = planner.poll(target, Status::Up, 1_000, hints(target, 1, 500, 0));
        assert!(plan.send.is_none());
        assert!(plan.retry_after_ms.is_some());
        let plan = planner.poll(target, Status::Up, 5_000, hints(target, 1, 500, 0));
        assert!(plan.send.is_some());
    }

    #[test]
    fn the_scan_resumes_after_the_last_batch_and_rewinds_when_one_is_lost() {
        let target = node(7);
        let mut planner = HandoffPlanner::new(HandoffConfig {
            max_batch_bytes: 20,
            ..config(0)
        });
        let all: Vec<Hint> = (0..5).map(|i| hint(target, i, 10, 0)).collect();
        let from = |planner: &HandoffPlanner| {
            let after = planner.resume_after(target).cloned();
            let start = all
                .iter()
                .position(|h| after.as_ref().is_none_or(|a| h.key > a.key))
                .unwrap_or(all.len());
            all[start..].iter().cloned().map(Ok).collect::<Vec<_>>()
        };
        let keys = |batch: &HintBatch| batch.hints.iter().map(|h| h.seq.0).collect::<Vec<_>>();

        let first = planner
            .poll(target, Status::Up, 0, from(&planner))
            .send
            .unwrap();
        assert_eq!(keys(&first), vec![0, 1]);
        planner.on_ack(target, first.id);
        let second = planner
            .poll(target, Status::Up, 0, from(&planner))
            .send
            .unwrap();
        assert_eq!(keys(&second), vec![2, 3]);
        planner.on_failure(target, second.id);
        let again = planner
            .poll(target, Status::Up, 0, from(&planner))
            .send
            .unwrap();
        assert_eq!(keys(&again), vec![2, 3], "a lost batch is sent again");
        planner.on_ack(target, again.id);
        let last = planner
            .poll(target, Status::Up, 0, from(&planner))
            .send
            .unwrap();
        assert_eq!(keys(&last), vec![4]);
        planner.on_ack(target, last.id);
        let wrap = planner.poll(target, Status::Up, 0, from(&planner));
        assert!(wrap.send.is_none());
        assert_eq!(wrap.retry_after_ms, Some(0));
        assert!(
            planner.resume_after(target).is_none(),
            "wrapped to the start"
        );
    }

    proptest::proptest! {
        /// Over any poll schedule and any hint sizes, what the planner sends
        /// in `t` ms stays within `rate * t` plus one burst (or one hint
        /// larger than the burst), and everything is sent eventually.
        #[test]
        fn sends_never_exceed_the_rate_and_everything_goes(
            rate in 100u64..50_000,
            sizes in proptest::collection::vec(1u64..5_000, 1..200),
            steps in proptest::collection::vec(1u64..400, 1..50),
        ) {
            let target = node(8);
            let mut planner = HandoffPlanner::new(HandoffConfig {
                bytes_per_sec: rate,
                max_batch_bytes: 8_000,
                ..HandoffConfig::default()
            });
            let all: Vec<Hint> = sizes
                .iter()
                .enumerate()
                .map(|(i, &size)| hint(target, i as u64, size, 0))
                .collect();
            let largest = sizes.iter().copied().max().unwrap_or(0);
            let (mut next, mut sent, mut now) = (0usize, 0u64, 0u64);
            let mut step = steps.iter().cycle();
            while next < all.len() {
                let plan = planner.poll(target, Status::Up, now, all[next..].iter().cloned().map(Ok));
                if let Some(batch) = plan.send {
                    next += batch.hints.len();
                    sent += batch.bytes;
                    proptest::prop_assert!(planner.on_ack(target, batch.id).is_some());
                }
                proptest::prop_assert!(
                    sent <= rate * now / 1000 + rate.max(largest),
                    "{} bytes sent in {} ms at {} B/s", sent, now, rate
                );
                now += step.next().copied().unwrap_or(1);
                proptest::prop_assert!(now < 10_000_000, "replay stalled");
            }
        }
    }
}
