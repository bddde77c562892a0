//! Versions of a key: dotted version vectors, sibling sets, the causal-context
//! tokens handed to clients, and their byte encodings. Pure logic, no I/O.
//!
//! # The model
//!
//! Every write of a key is a [`Version`] identified by a [`Dot`]
//! `(actor, counter)`: the `counter`-th write of that key coordinated by the
//! node whose incarnation is `actor`. Besides its dot a version records its
//! causal *past*: the [`VersionVector`] (the context) the write was made
//! with. A replica stores, per key, a [`SiblingSet`]: the versions no other
//! stored version supersedes, where
//!
//! > `Y` supersedes `X` iff `Y.past` covers `X.dot`.
//!
//! This is the rule of dotted version vectors (DVV, Preguiça, Baquero et al.,
//! "Dotted Version Vectors: Logical Clocks for Optimistic Replication"). The
//! seed and the Dynamo paper compare whole vector clocks instead (`X` is an
//! ancestor of `Y` iff `Y`'s clock is pointwise `>=`). Whole-clock comparison
//! cannot tell "written after seeing X" from "written by the same node after
//! X, without having seen it": when two clients write through the same
//! coordinator with the same stale context, the second clock is pointwise
//! larger and the first write is silently lost, and servers that avoid that
//! by keeping both grow siblings without bound (Riak's sibling explosion
//! before 2.0). With a dot per version, a write supersedes exactly what its
//! context covers: a `RESOLVE` with the context the client read replaces
//! exactly the siblings it saw, and versions written since stay.
//!
//! The causal context of a key ([`SiblingSet::causal_context`]) is the join
//! of every stored version's full clock (`past` joined with `dot`),
//! tombstones included. `VCLOCK` hands it out as an opaque token
//! ([`context::encode_token`]); `SET` and the other context-free writes
//! ([`SiblingSet::overwrite`]) use the coordinator's own causal context, so
//! they supersede everything the coordinator's replica knows (DESIGN.md §3).
//! That makes the seed's D1..D5 example come out as the seed describes (see
//! the unit test `seed_example_d1_to_d5`).
//!
//! # Per-key counters from the coordinator's merged context
//!
//! A new dot's counter is one more than the highest counter of the
//! coordinating actor found in the key's local set or in the write's context
//! ([`SiblingSet::write`]). Counters are per key, not per node, so clocks
//! stay small (a clock lists only the nodes that coordinated writes *of this
//! key*). Taking the maximum with the client's context matters: the
//! coordinator's replica may lag behind what a quorum read showed the client,
//! and reusing a counter the client has seen would make the new write look
//! already covered by its own context.
//!
//! # Replicate whole sets
//!
//! A version vector claims *every* dot up to each counter. After a stale
//! `RESOLVE` the coordinator holds `(A,2)` and `(A,3)` with `(A,3).past =
//! {A:1}`; a replica that received only `(A,3)` would report a context
//! `{A:3}` that claims `(A,2)` without having its value, and a client
//! resolving with that context would drop `(A,2)` unseen. So the unit of
//! replication, hinted handoff, read repair and anti-entropy is a key's
//! whole sibling set, merged with [`SiblingSet::merge`]; there is no
//! single-version wire form on purpose.
//!
//! # Actors are incarnations (kv679)
//!
//! An [`ActorId`] is a random id created with a node's data directory, not
//! the node's name. A node that lost its directory would otherwise start its
//! counters from 1 again and issue dots that replicas already hold for older
//! writes: the new writes would be deduplicated against, or superseded by,
//! old ones and silently lost (Riak's kv679). A new incarnation is a new
//! actor, so its dots are new.
//!
//! The same reasoning gives an invariant every caller must keep: **a replica
//! never loses versions of a key except through [`SiblingSet::merge`],
//! [`SiblingSet::write`] or tombstone GC under the rule below.** Anything
//! else that makes a node forget versions while keeping its actor id (a
//! `FLUSHALL` implemented as a local wipe, restoring an old backup, skipping
//! an unreadable SSTable) lets its next context-free write of such a key
//! reuse a counter that other replicas hold, and that write is then silently
//! superseded. Such operations must write tombstones, or give the node a new
//! [`ActorId`].
//!
//! # Counter reset when a key is fully purged
//!
//! Counters live only in the key's versions. Once tombstone GC
//! ([`SiblingSet::purge_tombstones_older_than`]) has removed every version of
//! a key on a node, that node's next write of the key starts again at
//! `(actor, 1)`. That is safe only if no copy of the old versions or of a
//! context naming them survives anywhere: a lagging replica, an old hint, or
//! a client holding an old token whose context covers `(actor, 1..)` would
//! supersede the new writes. The cluster therefore purges a tombstone only
//! after the grace period *and* once every replica has it (DESIGN.md §3), and
//! hints expire well before the grace period. An old client token is
//! the residual risk; [`SiblingSet::validate_context`] rejects one that
//! claims more than the key reached, which catches most of them.
//!
//! # Pruning
//!
//! Dynamo truncates clocks past a threshold (10 entries), dropping the
//! oldest. Dropping an entry from a version's past only makes it cover fewer
//! dots, so it never makes a version look like it descends from one it did
//! not see; the common effect is false concurrency (a superseded version
//! comes back as a sibling). But pruning also forgets how far an actor's
//! counter went: if every trace of actor `A` is pruned from a key while some
//! replica, hint or client token still holds a context covering `(A, n)`,
//! `A`'s next writes reuse counters `<= n` and that stale context would
//! supersede them (false descent, i.e. silent loss). The same hazard as a
//! counter reset above. [`SiblingSet::write`] therefore prunes only entries
//! older than a minimum age ([`PrunePolicy`], default one day, Riak's
//! `old_vclock`), by which time replicas have converged; a clock may exceed
//! the threshold meanwhile. Actors per key are few anyway: requests are
//! forwarded to a preference-list node (DESIGN.md §4), so only the N owners,
//! fallbacks during failures, and new incarnations ever coordinate a key.
//! Pruning also breaks the associativity of merge in theory (the laws below
//! hold for histories whose contexts are "down-closed", which pruning can
//! violate); in practice it only shows as extra siblings.
//!
//! # Files
//!
//! - [`clock`]: [`ActorId`], [`Dot`], [`VersionVector`].
//! - [`siblings`]: [`Version`], [`SiblingSet`] (merge, write, limits, GC).
//! - [`codec`]: the storage encoding of a set, byte by byte, and the
//!   allocation-light read path [`decode_live_values`].
//! - [`context`]: client tokens and the human-readable form.

pub mod clock;
pub mod codec;
pub mod context;
pub mod siblings;

#[cfg(test)]
mod tests;

pub use clock::{ActorId, Causality, ClockEntry, Dot, VersionVector};
pub use codec::{decode_live_values, CodecError, LiveValues};
pub use context::{decode_token, encode_token, fmt_human};
pub use siblings::{
    Payload, PrunePolicy, SiblingLimits, SiblingPressure, SiblingSet, Version,
    DEFAULT_MAX_CLOCK_ENTRIES, DEFAULT_PRUNE_MIN_AGE_MS,
};
