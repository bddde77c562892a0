//! Anti-entropy between two replicas of a partition: the deciding half.
//!
//! # What
//!
//! Two replicas compare their partition's [`MerkleTree`]s, descend to the
//! buckets whose hashes differ, compare those buckets key by key (one 16-byte
//! [`KeyFingerprint`] per key), and exchange the whole sibling sets of exactly
//! the keys that differ, in both directions. Each side merges what it
//! receives with `version::SiblingSet::merge`; since merge is commutative,
//! associative and idempotent, both replicas end with the same sets and the
//! same root (unless writes arrived meanwhile, which the next round handles).
//!
//! Everything here is pure: an [`AntiEntropySession`] consumes messages and
//! the data its caller loaded, and produces [`Effect`]s (messages to send,
//! data to load, sets to merge, and finally a report). A server task drives
//! it over the peer transport and the storage engine; a test drives two
//! sessions against each other with no I/O at all.
//!
//! # Message flow
//!
//! `I` opened the session, `R` answers; `D` is the leaf depth (3 for 1024
//! buckets). Every hash message carries the *sender's* hashes, so the
//! receiver can compare at once and answer with the next level down for the
//! nodes that differ: each message descends one level, and the roles of
//! "asker" and "answerer" alternate. A request/answer design (`LevelReq`
//! then `Level`) would need two messages per level instead of one.
//!
//! ```text
//! I -> R  Root { version, shape, root }          I's root; R compares
//! R -> I  Level { depth: 1, parents: [0], .. }   R's children of the root
//! I -> R  Level { depth: 2, parents, .. }        I's children of the depth-1
//!                                                nodes that differ
//!  ...    one Level per depth, alternating, down to depth D
//! X -> Y  BucketKeys { buckets }                 X is whoever received the
//!                                                depth-D hashes: it knows the
//!                                                differing buckets and sends
//!                                                (key, fingerprint) for each
//! Y -> X  Versions { entries, want }             Y plans the exchange: sets X
//!                                                lacks or holds differently,
//!                                                and the keys it wants from X
//! X -> Y  Versions { entries, want: [] }         only if `want` was not empty
//! ```
//!
//! Any side answers `InSync` when the hashes it was sent equal its own (the
//! roots, or every child under the nodes that differed: possible when writes
//! landed in between), and `Abort { reason }` on a protocol violation or a
//! shape/version mismatch; both end the session. With the default shape a
//! round that repairs something takes at most 7 messages (3.5 round trips);
//! a round between equal replicas takes 2 (`Root`, `InSync`).
//!
//! # Who does what
//!
//! - The session decides: which nodes and buckets differ
//!   ([`differing_children`], [`diff_levels`]), which keys go which way
//!   ([`plan_exchange`]), when it is done.
//! - The caller does the I/O, in answer to effects: [`Effect::LoadBucketKeys`]
//!   (one scan of the partition's keys for all listed buckets, answered with
//!   [`AntiEntropySession::on_bucket_keys`]), [`Effect::LoadVersions`] (read
//!   sibling sets, answered with [`AntiEntropySession::on_versions`]),
//!   [`Effect::Merge`] (merge each set into storage and update the tree; it
//!   must check that each key belongs to the partition, which the session
//!   cannot since it does not know the ring), [`Effect::Send`], and timeouts
//!   (drop a session that waits too long).
//! - Rate limiting is the caller's job. Every message knows its encoded size
//!   ([`Msg::wire_size`]), effects say how much they will load, the report
//!   counts bytes both ways, and [`SessionLimits::max_buckets_per_round`]
//!   caps how many buckets one round compares (the rest waits for the next
//!   round), which bounds a round's messages when a replica is far behind.
//!
//! # Wire format
//!
//! Messages are [`Msg`] encoded with `postcard` (serde) inside the peer
//! transport's frames. `varint` is postcard's unsigned LEB128 (`u16`, `u32`,
//! `u64`, lengths and counts); `u8` is one raw byte.
//!
//! ```text
//! varint  session                  SessionId
//! varint  partition
//! varint  body variant             0 Root, 1 Level, 2 BucketKeys, 3 Versions,
//!                                  4 InSync, 5 Abort
//! Root        u8 version, varint buckets, 32 B root hash
//! Level       u8 depth, varint n, n * varint parent,
//!             varint m, m * 32 B hash
//! BucketKeys  varint n, n * (varint bucket, varint k,
//!                            k * (varint len, key, 16 B fingerprint))
//! Versions    varint n, n * (varint len, key, varint len, sibling set),
//!             varint m, m * (varint len, key)
//! InSync      nothing
//! Abort       varint len, UTF-8 reason
//! ```
//!
//! Sibling sets are in `version::codec`'s format (which starts with its own
//! format byte). [`Body::Root`] opens every session with
//! [`PROTOCOL_VERSION`] and the tree shape, so a peer of another version or
//! shape answers [`Body::Abort`] instead of misreading the rest. A peer
//! cannot decode variants newer than it, so a new variant may only be sent
//! after the opening showed the peer knows it; anything else bumps the
//! version.
//!
//! # Departures from Dynamo
//!
//! Dynamo exchanges roots and traverses the trees without specifying a
//! protocol, and its trees follow key ranges that change when nodes join or
//! leave (one of its reasons to move to fixed partitions, its strategy 3).
//! Here trees follow the fixed partitions, so they survive membership
//! changes. Cassandra's repair ships whole trees to a coordinator and then
//! streams whole ranges under the differing leaves. Here only the hashes
//! under differing nodes travel, then only the keys of differing buckets,
//! then only the sets of differing keys: a round costs about
//! `16 * 32 B * depth` per differing bucket plus one fingerprint per key in
//! it, independent of the data set's size. Values travel as whole sibling
//! sets, never single versions (see "Replicate whole sets" in
//! [`crate::version`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::cluster::merkle::{
    BucketIndex, KeyFingerprint, LevelSnapshot, MerkleTree, NodeHash, TreeShape,
};
use crate::error::{Error, Result};

/// Version of the anti-entropy protocol, sent in [`Body::Root`].
pub const PROTOCOL_VERSION: u8 = 1;

/// Default for [`SessionLimits::max_buckets_per_round`].
pub const DEFAULT_MAX_BUCKETS_PER_ROUND: usize = 256;

/// Longest peer abort reason kept in a report, in characters.
const MAX_ABORT_REASON_CHARS: usize = 200;

/// A user key, as stored.
pub type Key = Vec<u8>;

/// Identifies a session between two nodes; chosen by the initiator (e.g.
/// random) so that both nodes may run sessions for the same partition at
/// once and the transport can route each message to its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub u64);

/// One key of a bucket as anti-entropy compares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// The user key.
    pub key: Key,
    /// Fingerprint of the key and its encoded sibling set
    /// ([`KeyFingerprint::of`]).
    pub fingerprint: KeyFingerprint,
}

impl KeyEntry {
    /// The entry of `key` holding the encoded sibling set `sibling_set`.
    pub fn of(key: &[u8], sibling_set: &[u8]) -> KeyEntry {
        KeyEntry {
            key: key.to_vec(),
            fingerprint: KeyFingerprint::of(key, sibling_set),
        }
    }
}

/// The keys of one bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketKeys {
    /// Which bucket.
    pub bucket: BucketIndex,
    /// Every key stored in it (any order).
    pub entries: Vec<KeyEntry>,
}

impl BucketKeys {
    /// Answers an [`Effect::LoadBucketKeys`] from one scan of the partition:
    /// `(key hash, key, encoded sibling set)` for every stored key, in any
    /// order. Returns one list per requested bucket (empty ones included),
    /// in the order of `buckets`; keys of other buckets are skipped without
    /// hashing their values.
    pub fn from_scan<K, V, I>(shape: TreeShape, buckets: &[BucketIndex], scan: I) -> Vec<BucketKeys>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
        I: IntoIterator<Item = (u64, K, V)>,
    {
        let slots: BTreeMap<BucketIndex, usize> =
            buckets.iter().enumerate().map(|(i, &b)| (b, i)).collect();
        let mut lists: Vec<BucketKeys> = buckets
            .iter()
            .map(|&bucket| BucketKeys {
                bucket,
                entries: Vec::new(),
            })
            .collect();
        for (key_hash, key, value) in scan {
            if let Some(&slot) = slots.get(&shape.bucket_of(key_hash)) {
                lists[slot]
                    .entries
                    .push(KeyEntry::of(key.as_ref(), value.as_ref()));
            }
        }
        lists
    }
}

/// A key's whole sibling set, encoded as `version::codec` stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionEntry {
    /// The user key.
    pub key: Key,
    /// The encoded sibling set.
    pub sibling_set: Vec<u8>,
}

/// One anti-entropy message: which session and partition, and what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msg {
    /// The session, chosen by the initiator.
    pub session: SessionId,
    /// The partition number (the ring's partition index).
    pub partition: u32,
    /// The content.
    pub body: Body,
}

/// The content of a [`Msg`]; see the module doc for the flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Opens a session: the initiator's protocol version, shape and root.
    Root {
        /// [`PROTOCOL_VERSION`] of the sender.
        version: u8,
        /// The sender's tree shape; must equal the receiver's.
        shape: TreeShape,
        /// The sender's root hash.
        root: NodeHash,
    },
    /// The sender's hashes at `depth` of the children of `parents` (nodes at
    /// `depth - 1`, strictly increasing), concatenated in parent order.
    Level {
        /// Depth of `hashes` (1 ..= leaf depth).
        depth: u8,
        /// The nodes one level up whose hashes differed.
        parents: Vec<u32>,
        /// The children's hashes.
        hashes: Vec<NodeHash>,
    },
    /// The sender's keys in each bucket that differed (strictly increasing
    /// buckets; an empty list for a bucket the sender holds nothing in).
    BucketKeys {
        /// One entry per differing bucket.
        buckets: Vec<BucketKeys>,
    },
    /// Sibling sets for the receiver to merge, and the keys whose sets the
    /// sender wants back (empty in the last message).
    Versions {
        /// Sets to merge.
        entries: Vec<VersionEntry>,
        /// Keys to send back.
        want: Vec<Key>,
    },
    /// The hashes just received equal the receiver's: nothing to do.
    InSync,
    /// The session is abandoned; nothing was or will be merged by it.
    Abort {
        /// Why, for the logs.
        reason: String,
    },
}

impl Msg {
    /// Bytes of the message's postcard encoding (what a rate limiter budgets).
    pub fn wire_size(&self) -> usize {
        // Cannot fail: every field is a plain serde type postcard supports
        // and the size flavor never runs out of room.
        postcard::experimental::serialized_size(self).unwrap_or(0)
    }

    /// A short name of the body's kind, for logs and tests.
    pub fn kind(&self) -> &'static str {
        match self.body {
            Body::Root { .. } => "Root",
            Body::Level { .. } => "Level",
            Body::BucketKeys { .. } => "BucketKeys",
            Body::Versions { .. } => "Versions",
            Body::InSync => "InSync",
            Body::Abort { .. } => "Abort",
        }
    }
}

/// What the caller must do for a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send this message to the peer.
    Send(Msg),
    /// List the keys (with [`KeyEntry::of`]) of these buckets of the
    /// partition, in one scan, and pass them to
    /// [`AntiEntropySession::on_bucket_keys`].
    LoadBucketKeys {
        /// The buckets, strictly increasing.
        buckets: Vec<BucketIndex>,
    },
    /// Read the sibling sets of these keys and pass them to
    /// [`AntiEntropySession::on_versions`] (skip keys no longer stored).
    LoadVersions {
        /// The keys, sorted.
        keys: Vec<Key>,
    },
    /// Merge each set into the stored one (`SiblingSet::merge`), then update
    /// the tree with the old and new encodings. The caller must first check
    /// that each key hashes into this partition, and drop the ones that do
    /// not.
    Merge {
        /// The peer's sets.
        entries: Vec<VersionEntry>,
    },
    /// The session ended; nothing more will come from it.
    Done(SessionReport),
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing needed exchanging.
    InSync,
    /// Some keys' sets were exchanged.
    Repaired,
    /// Abandoned (by either side), with the reason.
    Aborted(String),
}

/// What a session did, for `INFO` and the logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionReport {
    /// The session.
    pub session: SessionId,
    /// The partition number.
    pub partition: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// Buckets whose keys were compared.
    pub buckets_compared: usize,
    /// Distinct keys whose sets were sent, requested or both.
    pub keys_exchanged: usize,
    /// Encoded bytes of the messages sent.
    pub bytes_sent: usize,
    /// Encoded bytes of the messages received.
    pub bytes_received: usize,
    /// Messages sent.
    pub messages_sent: usize,
    /// Messages received.
    pub messages_received: usize,
}

/// Bounds on one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Most buckets one round compares key by key (default 256); the other
    /// differing buckets wait for the next round. Applied by the side that
    /// finds the differing buckets, and enforced on received `BucketKeys`.
    pub max_buckets_per_round: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_buckets_per_round: DEFAULT_MAX_BUCKETS_PER_ROUND,
        }
    }
}

/// Which keys go which way after comparing one bucket (or several).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exchange {
    /// Keys whose sets the peer lacks or holds differently (sorted).
    pub send_to_peer: Vec<Key>,
    /// Keys whose sets this side lacks or holds differently (sorted).
    pub request_from_peer: Vec<Key>,
}

impl Exchange {
    /// Distinct keys involved (a key differing on both sides counts once).
    /// Both lists must be sorted, as [`plan_exchange`] returns them.
    pub fn distinct_keys(&self) -> usize {
        let mut both = 0;
        let (mut i, mut j) = (0, 0);
        while i < self.send_to_peer.len() && j < self.request_from_peer.len() {
            match self.send_to_peer[i].cmp(&self.request_from_peer[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    both += 1;
                    i += 1;
                    j += 1;
                }
            }
        }
        self.send_to_peer.len() + self.request_from_peer.len() - both
    }
}

/// Decides which keys of a bucket go which way, from both sides' entries
/// (any order). A key only one side has goes to the other; a key whose
/// fingerprints differ goes both ways, because the caller merges rather than
/// picks a winner (neither set need descend from the other). Duplicate keys
/// in a list count once (the first).
pub fn plan_exchange(mine: &[KeyEntry], peer: &[KeyEntry]) -> Exchange {
    let mine = sorted_unique(mine);
    let peer = sorted_unique(peer);
    let mut plan = Exchange::default();
    let (mut i, mut j) = (0, 0);
    while i < mine.len() || j < peer.len() {
        let order = match (mine.get(i), peer.get(j)) {
            (Some(m), Some(p)) => m.key.cmp(&p.key),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                plan.send_to_peer.push(mine[i].key.clone());
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                plan.request_from_peer.push(peer[j].key.clone());
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if mine[i].fingerprint != peer[j].fingerprint {
                    plan.send_to_peer.push(mine[i].key.clone());
                    plan.request_from_peer.push(peer[j].key.clone());
                }
                i += 1;
                j += 1;
            }
        }
    }
    plan
}

fn sorted_unique(entries: &[KeyEntry]) -> Vec<&KeyEntry> {
    let mut refs: Vec<&KeyEntry> = entries.iter().collect();
    // Stable, so the first of duplicates survives the dedup.
    refs.sort_by(|a, b| a.key.cmp(&b.key));
    refs.dedup_by(|later, earlier| later.key == earlier.key);
    refs
}

/// One step of the descent: the peer sent `peer_hashes`, its hashes at
/// `depth` of the children of `parents` (at `depth - 1`, strictly
/// increasing); returns the indices at `depth` whose hashes differ from
/// mine. An error means the message does not fit my tree's shape.
pub fn differing_children(
    mine: &mut MerkleTree,
    depth: usize,
    parents: &[u32],
    peer_hashes: &[NodeHash],
) -> Result<Vec<u32>> {
    let shape = mine.shape();
    if depth == 0 || depth > shape.leaf_depth() {
        return Err(Error::invalid(format!(
            "anti-entropy: level depth {depth} outside 1..={}",
            shape.leaf_depth()
        )));
    }
    if parents.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::invalid(
            "anti-entropy: level parents are not strictly increasing",
        ));
    }
    let mut expected = 0;
    for &parent in parents {
        let children = shape.children(depth - 1, parent as usize);
        if children.is_empty() {
            return Err(Error::invalid(format!(
                "anti-entropy: node {parent} at depth {} does not exist",
                depth - 1
            )));
        }
        expected += children.len();
    }
    if peer_hashes.len() != expected {
        return Err(Error::invalid(format!(
            "anti-entropy: {} hashes at depth {depth}, expected {expected}",
            peer_hashes.len()
        )));
    }
    let level = mine.level(depth);
    let mut peer = peer_hashes.iter();
    let mut differing = Vec::new();
    for &parent in parents {
        for child in shape.children(depth - 1, parent as usize) {
            if peer.next() != Some(&level[child]) {
                differing.push(child as u32);
            }
        }
    }
    Ok(differing)
}

/// The buckets where `mine` and a peer's tree differ, given every level of
/// the peer's tree (root first, as [`MerkleTree::snapshot_levels`] gives
/// them). The same descent a session makes, in one call; for tools, tests
/// and callers that ship whole levels.
pub fn diff_levels(mine: &mut MerkleTree, peer: &[LevelSnapshot]) -> Result<Vec<BucketIndex>> {
    let shape = mine.shape();
    let leaf_depth = shape.leaf_depth();
    if peer.len() != leaf_depth + 1
        || peer
            .iter()
            .enumerate()
            .any(|(d, level)| level.depth as usize != d || level.hashes.len() != shape.width(d))
    {
        return Err(Error::invalid(
            "anti-entropy: peer levels do not match this tree's shape",
        ));
    }
    if mine.root() == peer[0].hashes[0] {
        return Ok(Vec::new());
    }
    let mut differing = vec![0u32];
    for (depth, peer_level) in peer.iter().enumerate().skip(1) {
        let peer_hashes: Vec<NodeHash> = differing
            .iter()
            .flat_map(|&p| shape.children(depth - 1, p as usize))
            .map(|child| peer_level.hashes[child])
            .collect();
        differing = differing_children(mine, depth, &differing, &peer_hashes)?;
    }
    Ok(differing.into_iter().map(BucketIndex).collect())
}

/// Where a session stands.
#[derive(Clone, Debug)]
enum State {
    /// Sent our hashes at `sent_depth`; waiting for the peer's next level,
    /// its bucket keys (after the leaf level), or `InSync`.
    AwaitPeer { sent_depth: usize },
    /// Found the differing buckets; waiting for the caller's key lists.
    LoadingKeysToSend { buckets: Vec<BucketIndex> },
    /// Sent our bucket keys; waiting for the peer's plan (`Versions`).
    AwaitPeerVersions { listed: BTreeSet<Key> },
    /// Received the peer's bucket keys; waiting for ours to plan.
    LoadingKeysToPlan { peer: Vec<BucketKeys> },
    /// Planned; waiting for the caller's sets to send, then `want` them back.
    LoadingVersionsToSend { want: Vec<Key> },
    /// Sent sets and a `want` list; waiting for the peer's sets.
    AwaitRequestedVersions { want: BTreeSet<Key> },
    /// The peer wants sets; waiting for the caller to load them.
    LoadingRequestedVersions,
    /// Over; late messages are ignored.
    Finished,
}

impl State {
    /// The state's name, for abort reasons (which travel to the peer, so
    /// they must not carry the key lists some states hold).
    fn name(&self) -> &'static str {
        match self {
            State::AwaitPeer { .. } => "AwaitPeer",
            State::LoadingKeysToSend { .. } => "LoadingKeysToSend",
            State::AwaitPeerVersions { .. } => "AwaitPeerVersions",
            State::LoadingKeysToPlan { .. } => "LoadingKeysToPlan",
            State::LoadingVersionsToSend { .. } => "LoadingVersionsToSend",
            State::AwaitRequestedVersions { .. } => "AwaitRequestedVersions",
            State::LoadingRequestedVersions => "LoadingRequestedVersions",
            State::Finished => "Finished",
        }
    }
}

/// One anti-entropy round for one partition with one peer, on either side.
/// See the module doc for the flow and the caller's duties.
#[derive(Clone, Debug)]
pub struct AntiEntropySession {
    limits: SessionLimits,
    state: State,
    report: SessionReport,
}

impl AntiEntropySession {
    /// Opens a session as the initiator; send the returned message.
    pub fn start(
        session: SessionId,
        partition: u32,
        limits: SessionLimits,
        tree: &mut MerkleTree,
    ) -> (AntiEntropySession, Msg) {
        let mut this = AntiEntropySession::new(
            session,
            partition,
            limits,
            State::AwaitPeer { sent_depth: 0 },
        );
        let body = Body::Root {
            version: PROTOCOL_VERSION,
            shape: tree.shape(),
            root: tree.root(),
        };
        let msg = this.message(body);
        this.count_sent(&msg);
        (this, msg)
    }

    /// Answers a peer's opening message (a [`Body::Root`]) as the
    /// responder; returns the session and what to do.
    pub fn respond(
        opening: Msg,
        limits: SessionLimits,
        tree: &mut MerkleTree,
    ) -> (AntiEntropySession, Vec<Effect>) {
        let mut this =
            AntiEntropySession::new(opening.session, opening.partition, limits, State::Finished);
        this.count_received(&opening);
        let kind = opening.kind();
        let effects = match opening.body {
            Body::Root {
                version,
                shape,
                root,
            } => this.compare_root(tree, version, shape, root),
            _ => this.abort(format!("expected Root to open a session, got {kind}")),
        };
        (this, effects)
    }

    /// Handles a message from the peer.
    pub fn on_message(&mut self, msg: Msg, tree: &mut MerkleTree) -> Vec<Effect> {
        if matches!(self.state, State::Finished) {
            return Vec::new();
        }
        self.count_received(&msg);
        if msg.session != self.report.session || msg.partition != self.report.partition {
            return self.abort(format!(
                "message for session {:?} partition {} reached session {:?} partition {}",
                msg.session, msg.partition, self.report.session, self.report.partition
            ));
        }
        let kind = msg.kind();
        let leaf_depth = tree.shape().leaf_depth();
        match (
            std::mem::replace(&mut self.state, State::Finished),
            msg.body,
        ) {
            (_, Body::Abort { reason }) => {
                // The reason goes to our logs: keep a peer from flooding them.
                let reason: String = reason.chars().take(MAX_ABORT_REASON_CHARS).collect();
                self.finish(Outcome::Aborted(format!("peer aborted: {reason}")))
            }
            (State::AwaitPeer { .. }, Body::InSync) => self.finish(Outcome::InSync),
            (
                State::AwaitPeer { sent_depth },
                Body::Level {
                    depth,
                    parents,
                    hashes,
                },
            ) if depth as usize == sent_depth + 1 => {
                self.compare_level(tree, depth as usize, &parents, &hashes)
            }
            (State::AwaitPeer { sent_depth }, Body::BucketKeys { buckets })
                if sent_depth == leaf_depth =>
            {
                self.receive_bucket_keys(tree.shape(), buckets)
            }
            (State::AwaitPeerVersions { listed }, Body::Versions { entries, want }) => {
                self.receive_plan(listed, entries, want)
            }
            (
                State::AwaitRequestedVersions { want },
                Body::Versions {
                    entries,
                    want: more,
                },
            ) => self.receive_requested(want, entries, more),
            (state, _) => self.abort(format!("unexpected {kind} in state {}", state.name())),
        }
    }

    /// The caller's answer to [`Effect::LoadBucketKeys`].
    pub fn on_bucket_keys(&mut self, loaded: Vec<BucketKeys>) -> Vec<Effect> {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::LoadingKeysToSend { buckets } => {
                let mut by_bucket = group_by_bucket(loaded);
                let lists: Vec<BucketKeys> = buckets
                    .into_iter()
                    .map(|bucket| BucketKeys {
                        bucket,
                        entries: by_bucket.remove(&bucket).unwrap_or_default(),
                    })
                    .collect();
                let listed = lists
                    .iter()
                    .flat_map(|b| b.entries.iter().map(|e| e.key.clone()))
                    .collect();
                self.state = State::AwaitPeerVersions { listed };
                vec![self.send(Body::BucketKeys { buckets: lists })]
            }
            State::LoadingKeysToPlan { peer } => {
                let mut mine = group_by_bucket(loaded);
                let mut send = Vec::new();
                let mut want = Vec::new();
                for theirs in &peer {
                    let ours = mine.remove(&theirs.bucket).unwrap_or_default();
                    let plan = plan_exchange(&ours, &theirs.entries);
                    send.extend(plan.send_to_peer);
                    want.extend(plan.request_from_peer);
                }
                send.sort();
                want.sort();
                let plan = Exchange {
                    send_to_peer: send,
                    request_from_peer: want,
                };
                self.report.keys_exchanged = plan.distinct_keys();
                if plan.send_to_peer.is_empty() {
                    self.send_versions(Vec::new(), plan.request_from_peer)
                } else {
                    self.state = State::LoadingVersionsToSend {
                        want: plan.request_from_peer,
                    };
                    vec![Effect::LoadVersions {
                        keys: plan.send_to_peer,
                    }]
                }
            }
            state => self.abort(format!("bucket keys loaded in state {}", state.name())),
        }
    }

    /// The caller's answer to [`Effect::LoadVersions`].
    pub fn on_versions(&mut self, loaded: Vec<VersionEntry>) -> Vec<Effect> {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::LoadingVersionsToSend { want } => self.send_versions(loaded, want),
            State::LoadingRequestedVersions => {
                let mut effects = vec![self.send(Body::Versions {
                    entries: loaded,
                    want: Vec::new(),
                })];
                effects.extend(self.finish_after_exchange());
                effects
            }
            state => self.abort(format!("versions loaded in state {}", state.name())),
        }
    }

    /// Gives the session up from the caller's side (storage failed, the
    /// peer cannot be reached, a timeout): an `Abort` for the peer (send it
    /// if the peer can still hear it) and the `Done` report. Nothing if the
    /// session already ended.
    pub fn cancel(&mut self, reason: String) -> Vec<Effect> {
        if self.is_finished() {
            return Vec::new();
        }
        self.abort(reason)
    }

    /// Whether the session has ended (its `Done` was returned).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }

    /// The counters so far (final once finished).
    pub fn report(&self) -> &SessionReport {
        &self.report
    }

    fn new(
        session: SessionId,
        partition: u32,
        limits: SessionLimits,
        state: State,
    ) -> AntiEntropySession {
        AntiEntropySession {
            limits,
            state,
            report: SessionReport {
                session,
                partition,
                outcome: Outcome::InSync,
                buckets_compared: 0,
                keys_exchanged: 0,
                bytes_sent: 0,
                bytes_received: 0,
                messages_sent: 0,
                messages_received: 0,
            },
        }
    }

    fn compare_root(
        &mut self,
        tree: &mut MerkleTree,
        version: u8,
        shape: TreeShape,
        root: NodeHash,
    ) -> Vec<Effect> {
        if version != PROTOCOL_VERSION {
            return self.abort(format!(
                "protocol version {version}, this node speaks {PROTOCOL_VERSION}"
            ));
        }
        if shape != tree.shape() {
            return self.abort(format!(
                "tree of {} buckets, this node has {}",
                shape.buckets(),
                tree.shape().buckets()
            ));
        }
        if root == tree.root() {
            let mut effects = vec![self.send(Body::InSync)];
            effects.extend(self.finish(Outcome::InSync));
            return effects;
        }
        self.descend_from(tree, 0, vec![0])
    }

    fn compare_level(
        &mut self,
        tree: &mut MerkleTree,
        depth: usize,
        parents: &[u32],
        hashes: &[NodeHash],
    ) -> Vec<Effect> {
        match differing_children(tree, depth, parents, hashes) {
            Ok(differing) if differing.is_empty() => {
                // Writes landed between the peer's hashes and ours.
                let mut effects = vec![self.send(Body::InSync)];
                effects.extend(self.finish(Outcome::InSync));
                effects
            }
            Ok(differing) => self.descend_from(tree, depth, differing),
            Err(e) => self.abort(e.to_string()),
        }
    }

    /// `differing` are the nodes at `depth` known to differ: send our
    /// hashes one level down, or at the leaves start comparing keys.
    fn descend_from(
        &mut self,
        tree: &mut MerkleTree,
        depth: usize,
        mut differing: Vec<u32>,
    ) -> Vec<Effect> {
        if depth == tree.shape().leaf_depth() {
            differing.truncate(self.limits.max_buckets_per_round.max(1));
            let buckets: Vec<BucketIndex> = differing.into_iter().map(BucketIndex).collect();
            self.report.buckets_compared = buckets.len();
            self.state = State::LoadingKeysToSend {
                buckets: buckets.clone(),
            };
            return vec![Effect::LoadBucketKeys { buckets }];
        }
        let hashes: Vec<NodeHash> = differing
            .iter()
            .flat_map(|&node| tree.children(depth, node as usize).to_vec())
            .collect();
        self.state = State::AwaitPeer {
            sent_depth: depth + 1,
        };
        vec![self.send(Body::Level {
            depth: (depth + 1) as u8,
            parents: differing,
            hashes,
        })]
    }

    fn receive_bucket_keys(&mut self, shape: TreeShape, buckets: Vec<BucketKeys>) -> Vec<Effect> {
        if buckets.is_empty() || buckets.len() > self.limits.max_buckets_per_round.max(1) {
            return self.abort(format!(
                "{} buckets to compare, limit {}",
                buckets.len(),
                self.limits.max_buckets_per_round
            ));
        }
        if buckets.windows(2).any(|w| w[0].bucket >= w[1].bucket)
            || buckets.iter().any(|b| b.bucket.0 >= shape.buckets())
        {
            return self.abort("bucket list not strictly increasing or out of range".into());
        }
        self.report.buckets_compared = buckets.len();
        let wanted = buckets.iter().map(|b| b.bucket).collect();
        self.state = State::LoadingKeysToPlan { peer: buckets };
        vec![Effect::LoadBucketKeys { buckets: wanted }]
    }

    /// On the side that listed its keys: the peer's sets and requests.
    fn receive_plan(
        &mut self,
        listed: BTreeSet<Key>,
        entries: Vec<VersionEntry>,
        want: Vec<Key>,
    ) -> Vec<Effect> {
        if let Some(stranger) = want.iter().find(|k| !listed.contains(*k)) {
            return self.abort(format!(
                "peer wants key {:?} that was not listed",
                String::from_utf8_lossy(stranger)
            ));
        }
        let mut keys: BTreeSet<&Key> = want.iter().collect();
        keys.extend(entries.iter().map(|e| &e.key));
        self.report.keys_exchanged = keys.len();
        let mut effects = Vec::new();
        if !entries.is_empty() {
            effects.push(Effect::Merge { entries });
        }
        if want.is_empty() {
            effects.extend(self.finish_after_exchange());
        } else {
            let mut want = want;
            want.sort();
            want.dedup();
            self.state = State::LoadingRequestedVersions;
            effects.push(Effect::LoadVersions { keys: want });
        }
        effects
    }

    /// On the planning side: the sets it asked for.
    fn receive_requested(
        &mut self,
        want: BTreeSet<Key>,
        entries: Vec<VersionEntry>,
        more: Vec<Key>,
    ) -> Vec<Effect> {
        if !more.is_empty() {
            return self.abort("a final Versions must not want more".into());
        }
        if let Some(stranger) = entries.iter().find(|e| !want.contains(&e.key)) {
            return self.abort(format!(
                "peer sent key {:?} that was not requested",
                String::from_utf8_lossy(&stranger.key)
            ));
        }
        let mut effects = Vec::new();
        if !entries.is_empty() {
            effects.push(Effect::Merge { entries });
        }
        effects.extend(self.finish_after_exchange());
        effects
    }

    fn send_versions(&mut self, entries: Vec<VersionEntry>, want: Vec<Key>) -> Vec<Effect> {
        let mut effects = vec![self.send(Body::Versions {
            entries,
            want: want.clone(),
        })];
        if want.is_empty() {
            effects.extend(self.finish_after_exchange());
        } else {
            self.state = State::AwaitRequestedVersions {
                want: want.into_iter().collect(),
            };
        }
        effects
    }

    fn finish_after_exchange(&mut self) -> Vec<Effect> {
        let outcome = if self.report.keys_exchanged > 0 {
            Outcome::Repaired
        } else {
            Outcome::InSync
        };
        self.finish(outcome)
    }

    fn abort(&mut self, reason: String) -> Vec<Effect> {
        let mut effects = vec![self.send(Body::Abort {
            reason: reason.clone(),
        })];
        effects.extend(self.finish(Outcome::Aborted(reason)));
        effects
    }

    fn finish(&mut self, outcome: Outcome) -> Vec<Effect> {
        self.state = State::Finished;
        self.report.outcome = outcome;
        vec![Effect::Done(self.report.clone())]
    }

    fn message(&self, body: Body) -> Msg {
        Msg {
            session: self.report.session,
            partition: self.report.partition,
            body,
        }
    }

    fn send(&mut self, body: Body) -> Effect {
        let msg = self.message(body);
        self.count_sent(&msg);
        Effect::Send(msg)
    }

    fn count_sent(&mut self, msg: &Msg) {
        self.report.messages_sent += 1;
        self.report.bytes_sent += msg.wire_size();
    }

    fn count_received(&mut self, msg: &Msg) {
        self.report.messages_received += 1;
        self.report.bytes_received += msg.wire_size();
    }
}

fn group_by_bucket(lists: Vec<BucketKeys>) -> BTreeMap<BucketIndex, Vec<KeyEntry>> {
    let mut grouped: BTreeMap<BucketIndex, Vec<KeyEntry>> = BTreeMap::new();
    for list in lists {
        grouped.entry(list.bucket).or_default().extend(list.entries);
    }
    grouped
}

#[cfg(test)]
mod tests;
