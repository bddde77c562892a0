//! Versions and sibling sets: what a replica stores for one key, how two
//! replicas' sets merge, and how a coordinator applies a new write.
//!
//! The rules are those of dotted version vectors (Preguiça et al.); see the
//! module doc of [`crate::version`] for why, and for the caveats.

use bytes::Bytes;

use super::clock::{ActorId, Dot, VersionVector};
use crate::error::{Error, Result};

/// What a version holds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Payload {
    /// The key's value.
    Value(Bytes),
    /// The key was deleted. A tombstone is a version like any other: it has a
    /// dot and a causal past, and supersedes what that past covers.
    Tombstone,
}

/// One version of a key: a write, identified by its dot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// The write's own event: unique among all versions of the key.
    pub dot: Dot,
    /// The causal context the write was made with: every version whose dot
    /// it covers is superseded by this one.
    pub past: VersionVector,
    pub payload: Payload,
    /// Absolute expiry (ms since the Unix epoch). The version reads as absent
    /// once the clock has passed this instant; at the instant itself it is
    /// still readable, as in Redis (`now > when` means expired). Nodes are
    /// assumed NTP-synced, since any replica may judge expiry.
    pub expires_at_ms: Option<u64>,
    /// When the coordinator made the write (ms since the Unix epoch). Used for
    /// tombstone grace periods and clock pruning, never for ordering.
    pub written_at_ms: u64,
}

impl Version {
    /// The version's full clock: its past joined with its own dot.
    pub fn clock(&self) -> VersionVector {
        let mut clock = self.past.clone();
        clock.observe_dot(self.dot, self.written_at_ms);
        clock
    }

    /// Whether this version supersedes `other` (the DVV rule: its causal past
    /// contains `other`'s dot).
    pub fn obsoletes(&self, other: &Version) -> bool {
        self.dot != other.dot && self.past.covers(other.dot)
    }

    pub fn is_tombstone(&self) -> bool {
        matches!(self.payload, Payload::Tombstone)
    }

    /// The value, if this version is not a tombstone (expired or not).
    pub fn value(&self) -> Option<&Bytes> {
        match &self.payload {
            Payload::Value(value) => Some(value),
            Payload::Tombstone => None,
        }
    }

    /// Whether the version has expired at `now_ms`. As in Redis, a key is
    /// still readable at the very millisecond of its expiry.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| now_ms > at)
    }

    /// Whether a read at `now_ms` sees this version: a value, not expired.
    pub fn is_live(&self, now_ms: u64) -> bool {
        !self.is_tombstone() && !self.is_expired(now_ms)
    }

    /// Since when this version has been dead (a tombstone since it was
    /// written, an expired value since its expiry); `None` for a value that
    /// has no expiry.
    pub fn dead_since_ms(&self) -> Option<u64> {
        match self.payload {
            Payload::Tombstone => Some(self.written_at_ms),
            Payload::Value(_) => self.expires_at_ms,
        }
    }
}

/// How many entries a new version's causal past may keep, and which entries
/// pruning may drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrunePolicy {
    /// Prune a past once it has more entries than this (default 10, as in
    /// Dynamo).
    pub max_entries: usize,
    /// Never drop an entry younger than this, in ms (default one day): an
    /// actor that wrote recently may still have versions in flight whose
    /// counters we must not forget (see "Pruning" in the module doc).
    pub min_age_ms: u64,
}

impl Default for PrunePolicy {
    fn default() -> Self {
        PrunePolicy {
            max_entries: DEFAULT_MAX_CLOCK_ENTRIES,
            min_age_ms: DEFAULT_PRUNE_MIN_AGE_MS,
        }
    }
}

/// Dynamo's clock truncation threshold.
pub const DEFAULT_MAX_CLOCK_ENTRIES: usize = 10;
/// One day, Riak's `old_vclock` default.
pub const DEFAULT_PRUNE_MIN_AGE_MS: u64 = 24 * 60 * 60 * 1000;

/// Bounds on the number of versions of one key (tombstones and expired
/// versions count: they cost the same to store and merge).
///
/// A key that accumulates siblings costs every read and every merge; past
/// `max` the caller refuses client writes that would add another one (merges
/// from replicas are never refused: refusing them would lose data that a
/// quorum already acknowledged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiblingLimits {
    /// Log a warning at this many versions (default 25).
    pub warn: usize,
    /// Refuse a client write that would leave more versions than this
    /// (default 100).
    pub max: usize,
}

impl Default for SiblingLimits {
    fn default() -> Self {
        SiblingLimits { warn: 25, max: 100 }
    }
}

/// The outcome of [`SiblingLimits::check`] for an allowed write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiblingPressure {
    Normal,
    /// The key has reached the warning threshold; worth a log line and a
    /// counter.
    Warn {
        versions: usize,
    },
}

impl SiblingLimits {
    /// Checks the limits themselves (for config validation).
    pub fn validate(&self) -> Result<()> {
        if self.max == 0 || self.warn > self.max {
            return Err(Error::invalid(format!(
                "invalid sibling limits: need 1 <= max and warn <= max (warn {}, max {})",
                self.warn, self.max
            )));
        }
        Ok(())
    }

    /// Decides whether a client write that would leave `versions` versions
    /// of a key (see [`SiblingSet::versions_after_write`]) may go ahead.
    ///
    /// Refusal is `Error::Conflict` ("CONFLICT too many siblings ..."): the
    /// client's remedy is the same as for any conflict, read the siblings
    /// with `VCLOCK key WITHVALUES` and `RESOLVE` them with that context.
    pub fn check(&self, versions: usize) -> Result<SiblingPressure> {
        if versions > self.max {
            return Err(Error::Conflict(format!(
                "too many siblings: this write would leave {versions} versions of the key \
                 (max {}); read them with VCLOCK key WITHVALUES and merge them with RESOLVE",
                self.max
            )));
        }
        if versions >= self.warn {
            return Ok(SiblingPressure::Warn { versions });
        }
        Ok(SiblingPressure::Normal)
    }
}

/// What a replica stores for one key: the versions that no other stored
/// version supersedes, sorted by dot (which is also the order `GET` lists
/// siblings in).
///
/// Invariants: dots are unique and strictly increasing; no version obsoletes
/// another ([`Version::obsoletes`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SiblingSet {
    versions: Vec<Version>,
}

impl SiblingSet {
    /// The set of a key never written.
    pub fn new() -> Self {
        SiblingSet::default()
    }

    /// Builds a set from versions in any order: duplicates of a dot collapse
    /// to one, superseded versions are dropped.
    pub fn from_versions(versions: impl IntoIterator<Item = Version>) -> Self {
        SiblingSet {
            versions: normalize(versions.into_iter().collect()),
        }
    }

    /// The versions, sorted by dot.
    pub fn versions(&self) -> &[Version] {
        &self.versions
    }

    /// Takes the versions out.
    pub fn into_versions(self) -> Vec<Version> {
        self.versions
    }

    /// Number of versions stored, tombstones and expired ones included.
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// Whether nothing at all is stored (not even a tombstone).
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// The versions a read at `now_ms` sees: values, not expired, by dot.
    pub fn live(&self, now_ms: u64) -> impl Iterator<Item = &Version> + '_ {
        self.versions.iter().filter(move |v| v.is_live(now_ms))
    }

    /// The values a read at `now_ms` sees, by dot.
    pub fn live_values(&self, now_ms: u64) -> impl Iterator<Item = &Bytes> + '_ {
        self.live(now_ms).filter_map(Version::value)
    }

    /// The one live version, if exactly one is live at `now_ms`.
    pub fn single_live(&self, now_ms: u64) -> Option<&Version> {
        let mut live = self.live(now_ms);
        let first = live.next()?;
        live.next().is_none().then_some(first)
    }

    /// Whether a read at `now_ms` finds nothing (absent, deleted or expired).
    pub fn is_live_empty(&self, now_ms: u64) -> bool {
        self.live(now_ms).next().is_none()
    }

    /// Whether a read at `now_ms` sees more than one value.
    pub fn has_siblings(&self, now_ms: u64) -> bool {
        self.live(now_ms).nth(1).is_some()
    }

    /// Whether something is stored and all of it is tombstones.
    pub fn is_only_tombstones(&self) -> bool {
        !self.versions.is_empty() && self.versions.iter().all(Version::is_tombstone)
    }

    /// The causal context of the key: the join of every stored version's
    /// full clock, tombstones included. This is what `VCLOCK` hands out and
    /// what a context-free write (`SET`) supersedes.
    pub fn causal_context(&self) -> VersionVector {
        let mut context = VersionVector::new();
        for version in &self.versions {
            context.join_in_place(&version.past);
            context.observe_dot(version.dot, version.written_at_ms);
        }
        context
    }

    /// Merges another replica's set into this one: the union, minus every
    /// version that a version of the union supersedes. Idempotent,
    /// commutative and associative (property-tested below).
    pub fn merge(&mut self, other: &SiblingSet) {
        if other.versions.is_empty() || *self == *other {
            return;
        }
        let mut all = std::mem::take(&mut self.versions);
        all.extend(other.versions.iter().cloned());
        self.versions = normalize(all);
    }

    /// [`merge`](Self::merge) taking `other` by value, which saves cloning
    /// its versions (replication and read repair receive owned sets).
    pub fn merge_owned(&mut self, other: SiblingSet) {
        if other.versions.is_empty() || *self == other {
            return;
        }
        if self.versions.is_empty() {
            *self = other;
            return;
        }
        let mut all = std::mem::take(&mut self.versions);
        all.extend(other.versions);
        self.versions = normalize(all);
    }

    /// Applies a write coordinated by `actor` with causal context `ctx`, and
    /// returns the new version's dot. The new dot's counter is one more than
    /// the highest counter of `actor` in this set's context or in `ctx`;
    /// every version `ctx` covers is dropped; the new version's past is `ctx`
    /// (pruned with the default [`PrunePolicy`]).
    ///
    /// A context-free `SET` passes `self.causal_context()` and so supersedes
    /// everything this replica holds; `RESOLVE` passes the client's context,
    /// and versions written after it stay as siblings.
    ///
    /// The caller validates a client's context first
    /// ([`validate_context`](Self::validate_context)) and checks
    /// [`SiblingLimits`] against [`versions_after_write`](Self::versions_after_write).
    pub fn write(
        &mut self,
        actor: ActorId,
        ctx: &VersionVector,
        payload: Payload,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> Dot {
        self.write_with_policy(
            actor,
            ctx,
            payload,
            expires_at_ms,
            now_ms,
            &PrunePolicy::default(),
        )
    }

    /// [`write`](Self::write) with an explicit pruning policy.
    pub fn write_with_policy(
        &mut self,
        actor: ActorId,
        ctx: &VersionVector,
        payload: Payload,
        expires_at_ms: Option<u64>,
        now_ms: u64,
        prune: &PrunePolicy,
    ) -> Dot {
        let seen = self.highest_counter(actor).max(ctx.get(actor));
        // Saturation is unreachable in practice (2^64 writes of one key); it
        // would reuse a dot, so the old holder of that dot is replaced.
        let dot = Dot::new(actor, seen.saturating_add(1));
        self.versions.retain(|v| !ctx.covers(v.dot) && v.dot != dot);
        let mut past = ctx.clone();
        past.prune_older_than(prune.max_entries, now_ms.saturating_sub(prune.min_age_ms));
        let version = Version {
            dot,
            past,
            payload,
            expires_at_ms,
            written_at_ms: now_ms,
        };
        // The new dot is above every dot of `actor` this set holds, but other
        // actors' dots interleave, so insert in order rather than push.
        let at = self.versions.partition_point(|v| v.dot < dot);
        self.versions.insert(at, version);
        dot
    }

    /// A context-free write (`SET`, `DEL`, ...) coordinated by `actor`: it
    /// supersedes every version this replica holds. Same as
    /// [`write`](Self::write) with `ctx = self.causal_context()`.
    pub fn overwrite(
        &mut self,
        actor: ActorId,
        payload: Payload,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> Dot {
        let ctx = self.causal_context();
        self.write(actor, &ctx, payload, expires_at_ms, now_ms)
    }

    /// How many versions the set would hold after a write with context
    /// `ctx`: the ones `ctx` does not cover, plus the new one.
    pub fn versions_after_write(&self, ctx: &VersionVector) -> usize {
        self.versions.iter().filter(|v| !ctx.covers(v.dot)).count() + 1
    }

    /// Rejects a client context that claims history this key never had: a
    /// counter above what the key's causal context reached (a forged token,
    /// or one taken from another key). The empty context is always valid.
    ///
    /// In a cluster, validate against the set merged from the quorum read,
    /// not against one replica that may lag behind what the client saw.
    pub fn validate_context(&self, ctx: &VersionVector) -> Result<()> {
        if ctx.is_empty() {
            return Ok(());
        }
        let known = self.causal_context();
        for entry in ctx {
            let reached = known.get(entry.actor);
            if reached == 0 {
                return Err(Error::invalid(format!(
                    "invalid context: it names {}:{} but that actor never wrote this key \
                     (is the context from another key?)",
                    entry.actor, entry.counter
                )));
            }
            if entry.counter > reached {
                return Err(Error::invalid(format!(
                    "invalid context: it claims {}:{} but this key only reached {}:{reached}",
                    entry.actor, entry.counter, entry.actor
                )));
            }
        }
        Ok(())
    }

    /// Drops dead versions that died before `cutoff_ms`: tombstones written
    /// before it and values that expired before it (an expired value is a
    /// tombstone with a timer). Returns how many were dropped.
    ///
    /// Only safe once every replica has the tombstone and no hint or stale
    /// copy can bring back what it superseded (DESIGN.md §3); the caller owns
    /// that decision. Purging a key completely also forgets its counters:
    /// see "Counter reset" in the module doc.
    pub fn purge_tombstones_older_than(&mut self, cutoff_ms: u64) -> usize {
        let before = self.versions.len();
        self.versions
            .retain(|v| v.dead_since_ms().is_none_or(|since| since >= cutoff_ms));
        before - self.versions.len()
    }

    /// The highest counter `actor` reached for this key, by this set.
    fn highest_counter(&self, actor: ActorId) -> u64 {
        self.versions
            .iter()
            .map(|v| {
                let own = if v.dot.actor == actor {
                    v.dot.counter
                } else {
                    0
                };
                own.max(v.past.get(actor))
            })
            .max()
            .unwrap_or(0)
    }

    /// Wraps versions already known to satisfy the invariants (the decoder
    /// checks them).
    pub(crate) fn from_normalized(versions: Vec<Version>) -> Self {
        SiblingSet { versions }
    }
}

/// Up to this many versions, [`obsolete_flags`] compares pairwise.
const SMALL_SET: usize = 16;

/// For each version (dots unique), whether another version of the slice
/// supersedes it.
///
/// Linear in the total number of clock entries rather than quadratic in the
/// number of versions: per actor it keeps the two largest counters any past
/// holds for that actor (from different versions), so "some *other* version
/// covers this dot" is one lookup even when the largest is the version's own
/// past (which only decoded garbage can produce).
pub(crate) fn obsolete_flags(versions: &[Version]) -> Vec<bool> {
    // Small sets (almost every key) are cheaper to check pairwise than to
    // build a map for.
    if versions.len() <= SMALL_SET {
        return versions
            .iter()
            .map(|x| versions.iter().any(|y| y.obsoletes(x)))
            .collect();
    }
    // actor -> (largest counter, index of its version, largest from any other version)
    let mut reach: std::collections::HashMap<ActorId, (u64, usize, u64)> =
        std::collections::HashMap::with_capacity(versions.len() * 2);
    for (index, version) in versions.iter().enumerate() {
        for entry in &version.past {
            let slot = reach.entry(entry.actor).or_insert((0, usize::MAX, 0));
            if entry.counter > slot.0 {
                *slot = (entry.counter, index, slot.0);
            } else if entry.counter > slot.2 {
                slot.2 = entry.counter;
            }
        }
    }
    versions
        .iter()
        .enumerate()
        .map(|(index, version)| {
            reach
                .get(&version.dot.actor)
                .is_some_and(|&(best, best_index, second)| {
                    let by_other = if best_index == index { second } else { best };
                    by_other >= version.dot.counter
                })
        })
        .collect()
}

/// Sorts by dot, collapses duplicate dots and drops superseded versions.
///
/// Duplicate dots mean the same write reached us twice and are identical in
/// any history the rest of this module produces; should they differ (a
/// counter reset, see the module doc) the later-written one wins, and on a
/// full tie the larger by `Ord`, so that the choice never depends on merge
/// order.
fn normalize(mut versions: Vec<Version>) -> Vec<Version> {
    versions.sort_unstable_by(|a, b| {
        a.dot
            .cmp(&b.dot)
            .then_with(|| b.written_at_ms.cmp(&a.written_at_ms))
            .then_with(|| b.cmp(a))
    });
    versions.dedup_by(|later, first| later.dot == first.dot);
    let obsolete = obsolete_flags(&versions);
    let mut obsolete = obsolete.into_iter();
    versions.retain(|_| !obsolete.next().unwrap_or(false));
    versions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::clock::tests::vv;
    use crate::version::context::fmt_human;

    const SX: ActorId = ActorId(0x5a);
    const SY: ActorId = ActorId(0x5b);
    const SZ: ActorId = ActorId(0x5c);

    fn value(s: &str) -> Payload {
        Payload::Value(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn values(set: &SiblingSet, now_ms: u64) -> Vec<&[u8]> {
        set.live_values(now_ms).map(|v| v.as_ref()).collect()
    }

    /// A context-free write (`SET`) at the replica holding `set`.
    fn set(set: &mut SiblingSet, actor: ActorId, v: &str, now_ms: u64) -> Dot {
        let ctx = set.causal_context();
        set.write(actor, &ctx, value(v), None, now_ms)
    }

    #[test]
    fn seed_example_d1_to_d5() {
        let (mut x, mut y, mut z) = (SiblingSet::new(), SiblingSet::new(), SiblingSet::new());
        // D1 and D2 are written through Sx and replicated everywhere.
        assert_eq!(set(&mut x, SX, "D1", 1), Dot::new(SX, 1));
        assert_eq!(set(&mut x, SX, "D2", 2), Dot::new(SX, 2));
        assert_eq!(x.len(), 1, "D2 replaces D1 on the same coordinator");
        y.merge(&x);
        z.merge(&x);
        // D3 through Sy and D4 through Sz, both from D2's context.
        set(&mut y, SY, "D3", 3);
        set(&mut z, SZ, "D4", 4);
        assert_eq!(
            fmt_human(&y.versions()[0].clock()),
            format!("{SX}:2, {SY}:1")
        );
        assert_eq!(
            fmt_human(&z.versions()[0].clock()),
            format!("{SX}:2, {SZ}:1")
        );
        // Sx learns both: they are siblings.
        x.merge(&y);
        x.merge(&z);
        assert_eq!(values(&x, 5), [b"D3".as_slice(), b"D4"]);
        assert!(x.has_siblings(5));
        let ctx = x.causal_context();
        assert_eq!(fmt_human(&ctx), format!("{SX}:2, {SY}:1, {SZ}:1"));
        // The client resolves through Sx with the context it read: D5.
        let d5 = x.write(SX, &ctx, value("D5"), None, 6);
        assert_eq!(d5, Dot::new(SX, 3));
        assert_eq!(values(&x, 6), [b"D5".as_slice()]);
        let d5_clock = x.versions()[0].clock();
        assert_eq!(fmt_human(&d5_clock), format!("{SX}:3, {SY}:1, {SZ}:1"));
        for old in [&y, &z] {
            assert!(d5_clock.descends(&old.versions()[0].clock()));
        }
        // Replicating D5 replaces D3 and D4 everywhere.
        y.merge(&x);
        z.merge(&x);
        assert_eq!(y, x);
        assert_eq!(z, x);
    }

    #[test]
    fn stale_resolve_keeps_a_later_set_as_sibling() {
        let mut key = SiblingSet::new();
        set(&mut key, SX, "v1", 1);
        let read_ctx = key.causal_context();
        assert_eq!(
            read_ctx,
            VersionVector::from_entries([crate::version::ClockEntry {
                actor: SX,
                counter: 1,
                timestamp_ms: 1,
            }])
        );
        // Another client SETs through the same coordinator...
        assert_eq!(set(&mut key, SX, "v2", 2), Dot::new(SX, 2));
        // ...then the first client resolves with the context it read.
        let dot = key.write(SX, &read_ctx, value("v3"), None, 3);
        assert_eq!(dot, Dot::new(SX, 3));
        assert_eq!(key.versions()[1].past, read_ctx);
        assert_eq!(
            values(&key, 3),
            [b"v2".as_slice(), b"v3"],
            "v2 must survive"
        );
        // Resolving with the full context collapses them.
        let ctx = key.causal_context();
        key.write(SX, &ctx, value("v4"), None, 4);
        assert_eq!(values(&key, 4), [b"v4".as_slice()]);
    }

    #[test]
    fn repeated_stale_resolves_do_not_explode() {
        // The sibling-explosion pattern: many clients writing with the same
        // stale context. Each adds one sibling; one resolve removes them all.
        let mut key = SiblingSet::new();
        set(&mut key, SX, "base", 1);
        let stale = key.causal_context();
        for i in 0..10 {
            key.write(SX, &stale, value(&format!("w{i}")), None, 2 + i);
        }
        assert_eq!(key.len(), 10, "the base is gone, each write is one sibling");
        let ctx = key.causal_context();
        key.write(SY, &ctx, value("merged"), None, 20);
        assert_eq!(values(&key, 20), [b"merged".as_slice()]);
    }

    #[test]
    fn write_counter_passes_the_clients_context_when_the_replica_lags() {
        // The client read (SX, 5) from a quorum this replica is not part of.
        let mut lagging = SiblingSet::new();
        let ctx = vv(&[(0x5a, 5)]);
        assert_eq!(
            lagging.write(SX, &ctx, value("v"), None, 1),
            Dot::new(SX, 6)
        );
    }

    #[test]
    fn writes_through_different_coordinators_are_siblings_until_merged_back() {
        let mut a = SiblingSet::new();
        let mut b = SiblingSet::new();
        set(&mut a, SX, "left", 1);
        set(&mut b, SY, "right", 1);
        a.merge(&b);
        assert_eq!(values(&a, 2), [b"left".as_slice(), b"right"]);
        // A SET at a coordinator that knows both supersedes both.
        set(&mut a, SX, "after", 3);
        b.merge(&a);
        assert_eq!(values(&b, 3), [b"after".as_slice()]);
    }

    #[test]
    fn delete_is_a_tombstone_that_reads_as_absent() {
        let mut key = SiblingSet::new();
        set(&mut key, SX, "v", 1);
        let ctx = key.causal_context();
        key.write(SX, &ctx, Payload::Tombstone, None, 2);
        assert!(key.is_live_empty(2));
        assert!(key.is_only_tombstones());
        assert_eq!(key.len(), 1);
        // The tombstone is still part of the causal context, so a lagging
        // replica's copy of "v" does not come back when merged.
        let mut lagging = SiblingSet::new();
        set(&mut lagging, SX, "v", 1);
        lagging.merge(&key);
        assert!(lagging.is_live_empty(3));
        // A tombstone next to a concurrent value: only the value is read.
        let mut other = SiblingSet::new();
        set(&mut other, SY, "concurrent", 1);
        key.merge(&other);
        assert_eq!(values(&key, 3), [b"concurrent".as_slice()]);
        assert!(!key.has_siblings(3));
        assert!(!key.is_only_tombstones());
    }

    #[test]
    fn expired_versions_read_as_absent_after_their_last_millisecond() {
        let mut key = SiblingSet::new();
        key.write(SX, &VersionVector::new(), value("v"), Some(100), 1);
        assert_eq!(values(&key, 100), [b"v".as_slice()]);
        assert!(key.is_live_empty(101));
        assert_eq!(key.single_live(100).map(|v| v.dot), Some(Dot::new(SX, 1)));
        assert!(key.single_live(101).is_none());
    }

    #[test]
    fn forged_contexts_are_rejected_and_real_ones_accepted() {
        let mut key = SiblingSet::new();
        set(&mut key, SX, "v1", 1);
        set(&mut key, SX, "v2", 2);
        assert!(key.validate_context(&VersionVector::new()).is_ok());
        assert!(key.validate_context(&key.causal_context()).is_ok());
        assert!(key.validate_context(&vv(&[(0x5a, 1)])).is_ok());
        let err = key.validate_context(&vv(&[(0x5a, 3)])).unwrap_err();
        assert_eq!(
            err.to_resp(),
            format!("ERR invalid context: it claims {SX}:3 but this key only reached {SX}:2")
        );
        let err = key.validate_context(&vv(&[(0x5b, 1)])).unwrap_err();
        assert!(
            err.to_resp().contains("never wrote this key"),
            "{}",
            err.to_resp()
        );
        assert!(SiblingSet::new()
            .validate_context(&vv(&[(0x5a, 1)]))
            .is_err());
    }

    #[test]
    fn sibling_limits_warn_then_refuse_client_writes() {
        let limits = SiblingLimits { warn: 2, max: 3 };
        limits.validate().unwrap();
        let mut key = SiblingSet::new();
        let stale = VersionVector::new();
        for i in 0..3 {
            key.write(SX, &stale, value(&format!("w{i}")), None, i);
        }
        assert_eq!(limits.check(1).unwrap(), SiblingPressure::Normal);
        assert_eq!(
            limits.check(2).unwrap(),
            SiblingPressure::Warn { versions: 2 }
        );
        assert_eq!(key.versions_after_write(&stale), 4);
        let err = limits.check(key.versions_after_write(&stale)).unwrap_err();
        assert!(
            err.to_resp().starts_with("CONFLICT too many siblings"),
            "{}",
            err.to_resp()
        );
        // Resolving is always allowed: it leaves one version.
        assert_eq!(key.versions_after_write(&key.causal_context()), 1);
        assert!(SiblingLimits { warn: 5, max: 3 }.validate().is_err());
        assert!(SiblingLimits::default().validate().is_ok());
    }

    #[test]
    fn purge_drops_only_versions_dead_before_the_cutoff() {
        let mut key = SiblingSet::new();
        key.write(SX, &VersionVector::new(), Payload::Tombstone, None, 10);
        key.write(SY, &VersionVector::new(), value("ttl"), Some(20), 10);
        key.write(SZ, &VersionVector::new(), value("keep"), None, 10);
        key.write(
            ActorId(9),
            &VersionVector::new(),
            Payload::Tombstone,
            None,
            30,
        );
        assert_eq!(key.purge_tombstones_older_than(25), 2);
        let left: Vec<Dot> = key.versions().iter().map(|v| v.dot).collect();
        assert_eq!(left, [Dot::new(ActorId(9), 1), Dot::new(SZ, 1)]);
        assert_eq!(key.purge_tombstones_older_than(25), 0);
    }

    #[test]
    fn write_prunes_only_old_entries_of_the_new_past() {
        let day = DEFAULT_PRUNE_MIN_AGE_MS;
        let old: VersionVector = (1..=12)
            .map(|a| crate::version::ClockEntry {
                actor: ActorId(a),
                counter: 1,
                timestamp_ms: a,
            })
            .collect();
        let mut key = SiblingSet::new();
        key.write(SX, &old, value("v"), None, day + 100);
        assert_eq!(key.versions()[0].past.len(), DEFAULT_MAX_CLOCK_ENTRIES);
        // The same clock, but recent: nothing is pruned.
        let mut key = SiblingSet::new();
        key.write(SX, &old, value("v"), None, 50);
        assert_eq!(key.versions()[0].past.len(), 12);
    }

    #[test]
    fn merge_of_equal_sets_is_a_no_op_and_dots_stay_sorted() {
        let mut a = SiblingSet::new();
        set(&mut a, SY, "y", 1);
        a.write(SX, &VersionVector::new(), value("x"), None, 2);
        let dots: Vec<Dot> = a.versions().iter().map(|v| v.dot).collect();
        assert_eq!(dots, [Dot::new(SX, 1), Dot::new(SY, 1)]);
        let before = a.clone();
        a.merge(&before);
        assert_eq!(a, before);
    }

    proptest::proptest! {
        #[test]
        fn obsolescence_check_agrees_with_its_definition(
            raw in proptest::collection::vec(
                (1u64..4, 1u64..20, crate::version::clock::tests::arb_clock()),
                0..40,
            ),
        ) {
            // Unique dots, arbitrary (even self-covering) pasts.
            let mut versions: Vec<Version> = raw
                .into_iter()
                .map(|(a, c, past)| Version {
                    dot: Dot::new(ActorId(a), c),
                    past,
                    payload: Payload::Tombstone,
                    expires_at_ms: None,
                    written_at_ms: 0,
                })
                .collect();
            versions.sort_by_key(|v| v.dot);
            versions.dedup_by_key(|v| v.dot);
            let naive: Vec<bool> = versions
                .iter()
                .map(|x| versions.iter().any(|y| y.obsoletes(x)))
                .collect();
            proptest::prop_assert_eq!(obsolete_flags(&versions), naive);
        }
    }

    #[test]
    fn overwrite_supersedes_everything_the_replica_holds() {
        let mut key = SiblingSet::new();
        key.write(SX, &VersionVector::new(), value("a"), None, 1);
        key.write(SY, &VersionVector::new(), value("b"), None, 1);
        assert_eq!(key.overwrite(SZ, value("c"), None, 2), Dot::new(SZ, 1));
        assert_eq!(values(&key, 2), [b"c".as_slice()]);
        let mut copy = SiblingSet::new();
        copy.merge_owned(key.clone());
        assert_eq!(copy, key);
    }

    #[test]
    fn conflicting_copies_of_one_dot_resolve_the_same_in_any_order() {
        // Only a counter reset can produce this; the choice must not depend
        // on merge order.
        let mut old = SiblingSet::new();
        old.write(SX, &VersionVector::new(), value("old"), None, 1);
        let mut new = SiblingSet::new();
        new.write(SX, &VersionVector::new(), value("new"), None, 2);
        let mut ab = old.clone();
        ab.merge(&new);
        let mut ba = new.clone();
        ba.merge(&old);
        assert_eq!(ab, ba);
        assert_eq!(values(&ab, 3), [b"new".as_slice()]);
    }
}
