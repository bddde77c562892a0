//! Actors, dots and version vectors: the counting half of a dotted version
//! vector (see the module doc of [`crate::version`] for the whole story).
//!
//! A [`VersionVector`] maps each [`ActorId`] to the highest counter of that
//! actor it has seen, and so stands for the set of dots `(actor, 1..=counter)`.
//! Entries also carry the wall-clock time their counter was last raised; that
//! time is used only to pick which entries to drop when a clock is pruned
//! (Dynamo's rule: oldest first), never to order versions.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A node's incarnation id: a random `u64` created together with its data
/// directory and stored in it. It is the actor of every clock entry the node
/// makes.
///
/// It is deliberately not the node's address or configured name: a node that
/// lost its data directory comes back with a new actor, so the counters it
/// starts again from 1 can never collide with (and be mistaken for older than)
/// the ones it issued before (Riak's kv679 silent-loss bug).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActorId(pub u64);

impl ActorId {
    /// A fresh random actor id, never zero (zero is left free so that a zeroed
    /// file or buffer is never mistaken for a real actor).
    pub fn random() -> Self {
        loop {
            let id: u64 = rand::random();
            if id != 0 {
                return ActorId(id);
            }
        }
    }
}

impl fmt::Display for ActorId {
    /// Sixteen lowercase hex digits, e.g. `3f2a00c1d4e5f607`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActorId({self})")
    }
}

impl FromStr for ActorId {
    type Err = Error;

    /// Parses 1 to 16 hex digits (either case), the inverse of `Display`.
    fn from_str(s: &str) -> Result<Self> {
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid(format!(
                "invalid actor id '{s}': expected 1 to 16 hex digits"
            )));
        }
        u64::from_str_radix(s, 16)
            .map(ActorId)
            .map_err(|_| Error::invalid(format!("invalid actor id '{s}'")))
    }
}

/// One event: the `counter`-th write that `actor` coordinated for a key.
/// Every version of a key has a unique dot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    pub actor: ActorId,
    pub counter: u64,
}

impl Dot {
    pub fn new(actor: ActorId, counter: u64) -> Self {
        Dot { actor, counter }
    }
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.actor, self.counter)
    }
}

/// One entry of a [`VersionVector`]: `actor` has seen its own counters up to
/// and including `counter`; `timestamp_ms` is when that counter was issued
/// (ms since the Unix epoch, the issuing node's clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClockEntry {
    pub actor: ActorId,
    pub counter: u64,
    pub timestamp_ms: u64,
}

/// How two version vectors relate causally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Causality {
    /// Both cover exactly the same dots.
    Equal,
    /// `self` covers everything `other` covers, and more.
    Descends,
    /// `other` covers everything `self` covers, and more.
    Precedes,
    /// Each covers a dot the other does not.
    Concurrent,
}

/// A vector clock: for each actor, the highest counter seen.
///
/// Invariants (kept by every constructor and method): entries are sorted by
/// actor with no duplicate actors, and every counter is at least 1 (an absent
/// actor means counter 0). Two vectors covering the same dots with the same
/// timestamps are therefore equal as values.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionVector {
    entries: Vec<ClockEntry>,
}

impl VersionVector {
    /// The empty clock: covers nothing.
    pub fn new() -> Self {
        VersionVector::default()
    }

    /// Builds a clock from entries in any order. Entries with counter 0 are
    /// dropped; duplicate actors are joined (highest counter wins).
    pub fn from_entries(entries: impl IntoIterator<Item = ClockEntry>) -> Self {
        let mut clock = VersionVector::new();
        for entry in entries {
            clock.observe(entry);
        }
        clock
    }

    /// Builds a clock from entries already sorted by strictly increasing
    /// actor with counters >= 1, as the decoders produce them. Returns `None`
    /// if they are not.
    pub(crate) fn from_sorted_entries(entries: Vec<ClockEntry>) -> Option<Self> {
        let sorted = entries.windows(2).all(|w| w[0].actor < w[1].actor);
        let counted = entries.iter().all(|e| e.counter >= 1);
        (sorted && counted).then_some(VersionVector { entries })
    }

    /// The highest counter of `actor` this clock has seen (0 if none).
    pub fn get(&self, actor: ActorId) -> u64 {
        self.entry(actor).map_or(0, |e| e.counter)
    }

    /// The entry of `actor`, if this clock has one.
    pub fn entry(&self, actor: ActorId) -> Option<&ClockEntry> {
        self.entries
            .binary_search_by_key(&actor, |e| e.actor)
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Whether the event `dot` is part of this clock's history.
    pub fn covers(&self, dot: Dot) -> bool {
        self.get(dot.actor) >= dot.counter
    }

    /// Whether this clock has seen everything `other` has (`self >= other`
    /// pointwise). Every clock descends from itself and from the empty clock.
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.entries.iter().all(|e| self.get(e.actor) >= e.counter)
    }

    /// How `self` relates to `other`.
    pub fn causal_cmp(&self, other: &VersionVector) -> Causality {
        match (self.descends(other), other.descends(self)) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::Descends,
            (false, true) => Causality::Precedes,
            (false, false) => Causality::Concurrent,
        }
    }

    /// The pointwise maximum of both clocks. For each actor the timestamp is
    /// the one of the larger counter (the later of the two on a tie, so that
    /// `join` is commutative).
    pub fn join(&self, other: &VersionVector) -> VersionVector {
        let (a, b) = (&self.entries, &other.entries);
        let mut entries = Vec::with_capacity(a.len().max(b.len()));
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            match a[i].actor.cmp(&b[j].actor) {
                Ordering::Less => {
                    entries.push(a[i]);
                    i += 1;
                }
                Ordering::Greater => {
                    entries.push(b[j]);
                    j += 1;
                }
                Ordering::Equal => {
                    let later = if b[j].progress() > a[i].progress() {
                        b[j]
                    } else {
                        a[i]
                    };
                    entries.push(later);
                    i += 1;
                    j += 1;
                }
            }
        }
        entries.extend_from_slice(&a[i..]);
        entries.extend_from_slice(&b[j..]);
        VersionVector { entries }
    }

    /// Joins `other` into `self` in place.
    pub fn join_in_place(&mut self, other: &VersionVector) {
        if other.entries.is_empty() {
            return;
        }
        *self = self.join(other);
    }

    /// Joins one entry into the clock (pointwise max, as [`join`](Self::join)).
    /// An entry with counter 0 changes nothing.
    pub fn observe(&mut self, entry: ClockEntry) {
        if entry.counter == 0 {
            return;
        }
        match self.entries.binary_search_by_key(&entry.actor, |e| e.actor) {
            Ok(i) => {
                if entry.progress() > self.entries[i].progress() {
                    self.entries[i] = entry;
                }
            }
            Err(i) => self.entries.insert(i, entry),
        }
    }

    /// Joins the single event `dot`, issued at `timestamp_ms`, into the clock.
    pub fn observe_dot(&mut self, dot: Dot, timestamp_ms: u64) {
        self.observe(ClockEntry {
            actor: dot.actor,
            counter: dot.counter,
            timestamp_ms,
        });
    }

    /// Drops entries, oldest timestamp first (ties: smaller actor first, so
    /// the result is deterministic), until at most `max_entries` remain.
    /// Returns how many entries were dropped.
    ///
    /// Dynamo's clock truncation. Dropping an entry forgets history, so a
    /// version written with a pruned clock may fail to supersede versions it
    /// really descends from (they come back as siblings). It also forgets how
    /// far that actor's counter went: see "Pruning" in the module doc of
    /// [`crate::version`] for why writes prune only entries older than a
    /// minimum age ([`prune_older_than`](Self::prune_older_than)).
    pub fn prune(&mut self, max_entries: usize) -> usize {
        self.prune_older_than(max_entries, u64::MAX)
    }

    /// Like [`prune`](Self::prune), but never drops an entry whose timestamp
    /// is at or after `cutoff_ms`; the clock may then stay above
    /// `max_entries`. Returns how many entries were dropped.
    pub fn prune_older_than(&mut self, max_entries: usize, cutoff_ms: u64) -> usize {
        if self.entries.len() <= max_entries {
            return 0;
        }
        let mut by_age: Vec<(u64, ActorId)> = self
            .entries
            .iter()
            .filter(|e| e.timestamp_ms < cutoff_ms)
            .map(|e| (e.timestamp_ms, e.actor))
            .collect();
        by_age.sort_unstable();
        let excess = self.entries.len() - max_entries;
        by_age.truncate(excess);
        if by_age.is_empty() {
            return 0;
        }
        let mut doomed: Vec<ActorId> = by_age.into_iter().map(|(_, actor)| actor).collect();
        doomed.sort_unstable();
        let before = self.entries.len();
        self.entries
            .retain(|e| doomed.binary_search(&e.actor).is_err());
        before - self.entries.len()
    }

    /// The entries, sorted by actor.
    pub fn entries(&self) -> &[ClockEntry] {
        &self.entries
    }

    /// Iterates over the entries, sorted by actor.
    pub fn iter(&self) -> std::slice::Iter<'_, ClockEntry> {
        self.entries.iter()
    }

    /// Number of actors in the clock.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the clock covers nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl ClockEntry {
    /// The order in which two entries of the same actor supersede each other.
    fn progress(&self) -> (u64, u64) {
        (self.counter, self.timestamp_ms)
    }
}

impl fmt::Display for VersionVector {
    /// `actor:counter` pairs by actor, as [`fmt_human`](super::context::fmt_human).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&super::context::fmt_human(self))
    }
}

impl fmt::Debug for VersionVector {
    /// `{actor:counter@timestamp_ms, ...}`: compact enough to read in a
    /// failing test.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, e) in self.entries.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{}:{}@{}", e.actor, e.counter, e.timestamp_ms)?;
        }
        f.write_str("}")
    }
}

impl<'a> IntoIterator for &'a VersionVector {
    type Item = &'a ClockEntry;
    type IntoIter = std::slice::Iter<'a, ClockEntry>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

impl FromIterator<ClockEntry> for VersionVector {
    fn from_iter<I: IntoIterator<Item = ClockEntry>>(iter: I) -> Self {
        VersionVector::from_entries(iter)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn entry(actor: u64, counter: u64, timestamp_ms: u64) -> ClockEntry {
        ClockEntry {
            actor: ActorId(actor),
            counter,
            timestamp_ms,
        }
    }

    pub(crate) fn vv(pairs: &[(u64, u64)]) -> VersionVector {
        pairs.iter().map(|&(a, c)| entry(a, c, c * 10)).collect()
    }

    /// Clocks over a handful of actors, so that they often share entries.
    pub(crate) fn arb_clock() -> impl Strategy<Value = VersionVector> {
        prop::collection::vec((1u64..6, 0u64..5, 0u64..100), 0..6).prop_map(|raw| {
            raw.into_iter()
                .map(|(a, c, t)| entry(a, c, t))
                .collect::<VersionVector>()
        })
    }

    #[test]
    fn actor_ids_print_as_sixteen_hex_digits_and_parse_back() {
        let actor = ActorId(0x3f2a);
        assert_eq!(actor.to_string(), "0000000000003f2a");
        assert_eq!("0000000000003f2a".parse::<ActorId>().unwrap(), actor);
        assert_eq!("3F2A".parse::<ActorId>().unwrap(), actor);
        assert!("".parse::<ActorId>().is_err());
        assert!("12345678901234567".parse::<ActorId>().is_err());
        assert!("xyz".parse::<ActorId>().is_err());
        assert_ne!(ActorId::random(), ActorId(0));
    }

    #[test]
    fn a_clock_covers_every_dot_up_to_its_counter() {
        let clock = vv(&[(1, 3)]);
        assert!(clock.covers(Dot::new(ActorId(1), 1)));
        assert!(clock.covers(Dot::new(ActorId(1), 3)));
        assert!(!clock.covers(Dot::new(ActorId(1), 4)));
        assert!(!clock.covers(Dot::new(ActorId(2), 1)));
    }

    #[test]
    fn seed_ancestor_and_conflict_examples() {
        // D([s0,1],[s1,1]) is an ancestor of D([s0,1],[s1,2]).
        let older = vv(&[(0x50, 1), (0x51, 1)]);
        let newer = vv(&[(0x50, 1), (0x51, 2)]);
        assert_eq!(newer.causal_cmp(&older), Causality::Descends);
        assert_eq!(older.causal_cmp(&newer), Causality::Precedes);
        // D([s0,1],[s1,2]) and D([s0,2],[s1,1]) conflict.
        let other = vv(&[(0x50, 2), (0x51, 1)]);
        assert_eq!(newer.causal_cmp(&other), Causality::Concurrent);
        assert_eq!(newer.causal_cmp(&newer.clone()), Causality::Equal);
    }

    #[test]
    fn join_keeps_the_timestamp_of_the_larger_counter() {
        let a = VersionVector::from_entries([entry(1, 5, 100), entry(2, 1, 900)]);
        let b = VersionVector::from_entries([entry(1, 3, 800), entry(2, 2, 50), entry(3, 1, 7)]);
        let joined = a.join(&b);
        assert_eq!(
            joined.entries(),
            &[entry(1, 5, 100), entry(2, 2, 50), entry(3, 1, 7)]
        );
    }

    #[test]
    fn counter_zero_entries_are_not_kept() {
        let clock = VersionVector::from_entries([entry(1, 0, 5)]);
        assert!(clock.is_empty());
        assert!(VersionVector::from_sorted_entries(vec![entry(1, 0, 5)]).is_none());
        assert!(VersionVector::from_sorted_entries(vec![entry(2, 1, 5), entry(1, 1, 5)]).is_none());
    }

    #[test]
    fn prune_drops_the_oldest_entries_first() {
        let mut clock: VersionVector = (1..=12).map(|a| entry(a, 1, 1000 - a)).collect();
        // Actors 12 and 11 have the oldest timestamps.
        assert_eq!(clock.prune(10), 2);
        assert_eq!(clock.len(), 10);
        assert_eq!(clock.get(ActorId(12)), 0);
        assert_eq!(clock.get(ActorId(11)), 0);
        assert_eq!(clock.get(ActorId(1)), 1);
        assert_eq!(clock.prune(10), 0);
    }

    #[test]
    fn prune_older_than_never_drops_recent_entries() {
        let mut clock: VersionVector = (1..=12).map(|a| entry(a, 1, a * 100)).collect();
        // Only actors 1 and 2 (timestamps 100, 200) are older than 250, so
        // the clock stays above the threshold rather than drop recent ones.
        let mut recent = clock.clone();
        assert_eq!(recent.prune_older_than(5, 250), 2);
        assert_eq!(recent.len(), 10);
        assert_eq!(clock.prune_older_than(11, 10_000), 1);
        assert_eq!(clock.get(ActorId(1)), 0);
    }

    proptest! {
        #[test]
        fn join_is_a_semilattice(a in arb_clock(), b in arb_clock(), c in arb_clock()) {
            prop_assert_eq!(a.join(&a), a.clone());
            prop_assert_eq!(a.join(&b), b.join(&a));
            prop_assert_eq!(a.join(&b).join(&c), a.join(&b.join(&c)));
            let ab = a.join(&b);
            prop_assert!(ab.descends(&a) && ab.descends(&b));
        }

        #[test]
        fn descends_agrees_with_join(a in arb_clock(), b in arb_clock()) {
            // a >= b exactly when joining b adds no dots to a.
            let joined = a.join(&b);
            let same_dots = joined.iter().all(|e| a.get(e.actor) == e.counter);
            prop_assert_eq!(a.descends(&b), same_dots);
        }

        #[test]
        fn prune_keeps_at_most_max_entries_and_only_the_newest(
            clock in prop::collection::vec((any::<u64>(), 1u64..100, 0u64..50), 0..30)
                .prop_map(|raw| raw.into_iter().map(|(a, c, t)| entry(a, c, t)).collect::<VersionVector>()),
            max in 0usize..15,
        ) {
            let mut pruned = clock.clone();
            let dropped = pruned.prune(max);
            prop_assert!(pruned.len() <= max);
            prop_assert_eq!(pruned.len() + dropped, clock.len());
            // Pruning only forgets: the original still descends from it.
            prop_assert!(clock.descends(&pruned));
            let oldest_kept = pruned.iter().map(|e| e.timestamp_ms).min();
            for e in clock.iter().filter(|e| pruned.entry(e.actor).is_none()) {
                prop_assert!(oldest_kept.is_none_or(|kept| e.timestamp_ms <= kept));
            }
        }
    }
}
