//! Everything nodes say to each other, and how it travels.
//!
//! # The connection, byte by byte
//!
//! An internode connection is TCP on the peer port (default client port +
//! 10000). Both sides start by writing a fixed 5-byte **preface**, then
//! exchange **frames**:
//!
//! ```text
//! preface := "RKVP" (4 bytes, PREFACE_MAGIC)  version (1 byte, PROTOCOL_VERSION = 1)
//! frame   := length (u32, big-endian, 1 ..= max frame length)  payload (length bytes)
//! payload := postcard encoding of one `Message`
//! ```
//!
//! The preface is checked before anything else is read: a wrong magic (a
//! client that dialled the wrong port) or version closes the connection with
//! a log line. The frame layout is tokio-util's `LengthDelimitedCodec` with
//! its defaults (4-byte big-endian length, no adjustment), with
//! `max_frame_length` set to [`DEFAULT_MAX_FRAME_LEN`] (64 MiB). A frame
//! above the maximum, or a payload that does not decode, closes the
//! connection; the node keeps serving. Values are bounded by the maximum
//! frame size minus [`FRAME_OVERHEAD`]: the coordinator must refuse larger
//! writes up front rather than fail to replicate them.
//!
//! The first frame each way is [`Message::Hello`]. With a cluster secret
//! configured, each side then sends [`Message::HelloProof`]: the HMAC-SHA256
//! of the other side's nonce ([`hello_proof`]), so neither the secret nor a
//! replayable answer crosses the wire. A connection that fails the check is
//! closed before any other message is read. After the handshake the frames
//! are any [`Message`], in any order; requests carry a [`RequestId`] that
//! their answer repeats, so many requests share one connection.
//!
//! # Versioning
//!
//! The preface's version byte names the whole message set. Postcard is not
//! self-describing (an enum variant is its index as a varint, fields follow
//! in declaration order), so adding a variant at the end is compatible for
//! receivers that never get it, but changing or reordering anything means a
//! new [`PROTOCOL_VERSION`]. Variants are listed in wire order and must only
//! ever be appended.
//!
//! # Deadlines travel as budgets
//!
//! A request carries `budget_ms`, the time left until its deadline when it
//! was sent, rather than an absolute time: the receiver's deadline is
//! "arrival + budget", which needs no clock agreement between nodes (as in
//! gRPC). A receiver drops work whose budget ran out before it got to it.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::anti_entropy;
use super::membership::{GossipMessage, GossipReject};
use super::ring::{NodeId, PartitionId};
use crate::error::{Error, Result};

/// The first four bytes each side writes on an internode connection.
pub const PREFACE_MAGIC: [u8; 4] = *b"RKVP";

/// The version byte after the magic; the message set it names is this file.
pub const PROTOCOL_VERSION: u8 = 1;

/// The preface: magic then version.
pub const PREFACE: [u8; 5] = [
    PREFACE_MAGIC[0],
    PREFACE_MAGIC[1],
    PREFACE_MAGIC[2],
    PREFACE_MAGIC[3],
    PROTOCOL_VERSION,
];

/// The default maximum frame payload, in bytes (64 MiB).
pub const DEFAULT_MAX_FRAME_LEN: usize = 64 << 20;

/// Room kept in a frame for everything but a value (key, clocks, ids).
pub const FRAME_OVERHEAD: usize = 1 << 20;

/// Check the 5-byte preface a peer sent.
pub fn check_preface(bytes: &[u8; 5]) -> Result<()> {
    if bytes[..4] != PREFACE_MAGIC {
        return Err(Error::invalid(
            "not a ringkv peer (bad preface magic on the internode port)",
        ));
    }
    if bytes[4] != PROTOCOL_VERSION {
        return Err(Error::invalid(format!(
            "internode protocol version {} not supported (this node speaks {PROTOCOL_VERSION})",
            bytes[4]
        )));
    }
    Ok(())
}

/// Byte fields of the hot messages, serialized as serde bytes. Postcard
/// writes a `Vec<u8>` as a sequence of `u8` and a byte string as bytes, and
/// both come out as the same wire form (a varint length, then the bytes), so
/// this changes nothing on the wire; it only spares the encoder and decoder
/// a call per byte.
mod byte_fields {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::{Deserialize, Serialize, Serializer};

    use super::RemoteError;

    /// A borrowed byte string that serializes as bytes.
    struct AsBytes<'a>(&'a [u8]);

    impl Serialize for AsBytes<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    /// An owned byte string that deserializes from bytes (or a sequence).
    struct ByteBuf(Vec<u8>);

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a byte string")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
                    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                    while let Some(b) = seq.next_element::<u8>()? {
                        out.push(b);
                    }
                    Ok(ByteBuf(out))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }

    pub mod one {
        use super::*;

        pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            AsBytes(v).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
            ByteBuf::deserialize(d).map(|b| b.0)
        }
    }

    pub mod many {
        use super::*;

        pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|b| AsBytes(b)))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
            Vec::<ByteBuf>::deserialize(d).map(|v| v.into_iter().map(|b| b.0).collect())
        }
    }

    pub mod outcome {
        use super::*;

        type Outcome = Result<Option<Vec<u8>>, RemoteError>;

        pub fn serialize<S: Serializer>(v: &Outcome, s: S) -> Result<S::Ok, S::Error> {
            let borrowed: Result<Option<AsBytes<'_>>, &RemoteError> = match v {
                Ok(set) => Ok(set.as_deref().map(AsBytes)),
                Err(e) => Err(e),
            };
            borrowed.serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Outcome, D::Error> {
            let owned = Result::<Option<ByteBuf>, RemoteError>::deserialize(d)?;
            Ok(owned.map(|set| set.map(|b| b.0)))
        }
    }
}

/// Identifies a request on a connection; the answer repeats it. Chosen by
/// the sender, unique among its outstanding requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// The first frame each way on a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's id.
    pub node_id: NodeId,
    /// The sender's advertised internode address.
    pub peer_addr: String,
    /// The sender's cluster name (checked before gossip checks the rest).
    pub cluster: String,
    /// Fresh random bytes the other side must MAC when a secret is set.
    pub nonce: [u8; 16],
}

/// The second frame each way when a cluster secret is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloProof {
    /// [`hello_proof`] of the *other* side's nonce.
    pub mac: [u8; 32],
}

/// `HMAC-SHA256(secret, "ringkv/hello/v1" || their_nonce || prover)`: the
/// proof that `prover` knows the cluster secret, bound to the nonce the other
/// side chose (no replay) and to the prover's id (no reflection of the other
/// side's own proof back at it).
pub fn hello_proof(secret: &[u8], their_nonce: &[u8; 16], prover: NodeId) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(b"ringkv/hello/v1");
    mac.update(their_nonce);
    mac.update(prover.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Check a peer's [`HelloProof`] in constant time.
pub fn verify_hello_proof(
    secret: &[u8],
    our_nonce: &[u8; 16],
    prover: NodeId,
    proof: &HelloProof,
) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(b"ringkv/hello/v1");
    mac.update(our_nonce);
    mac.update(prover.as_bytes());
    mac.verify_slice(&proof.mac).is_ok()
}

/// Store a key's sibling set on a replica (the coordinator's write, read
/// repair, or a sloppy-quorum write with a hint).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// Repeated in the [`PutAck`].
    pub id: RequestId,
    /// The key's partition (the receiver checks it against the key).
    pub partition: PartitionId,
    /// The key.
    #[serde(with = "byte_fields::one")]
    pub key: Vec<u8>,
    /// The sibling set to merge into the replica's, in the `version`
    /// module's encoding. Whole sets, never single versions: see `version`.
    #[serde(with = "byte_fields::one")]
    pub siblings: Vec<u8>,
    /// Milliseconds left until the coordinator's deadline when sent.
    pub budget_ms: u32,
    /// For a sloppy-quorum write to a fallback: the owner the data is meant
    /// for, to be handed off when it is back. `None` for an owner.
    pub hint_for: Option<NodeId>,
}

/// The answer to a [`PutRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutAck {
    /// The request answered.
    pub id: RequestId,
    /// `Ok` once the merged set is stored (by the replica's fsync policy).
    pub outcome: Result<(), RemoteError>,
}

/// Read a key's sibling set from a replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetRequest {
    /// Repeated in the [`GetReply`].
    pub id: RequestId,
    /// The key's partition.
    pub partition: PartitionId,
    /// The key.
    #[serde(with = "byte_fields::one")]
    pub key: Vec<u8>,
    /// Milliseconds left until the coordinator's deadline when sent.
    pub budget_ms: u32,
}

/// The answer to a [`GetRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetReply {
    /// The request answered.
    pub id: RequestId,
    /// The replica's encoded sibling set, `None` if it never saw the key.
    #[serde(with = "byte_fields::outcome")]
    pub outcome: Result<Option<Vec<u8>>, RemoteError>,
}

/// A client command sent to a node in the key's preference list, by a node
/// that is not in it (one hop; the target coordinates).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardRequest {
    /// Repeated in the [`ForwardReply`].
    pub id: RequestId,
    /// The command and its arguments, as the client sent them.
    #[serde(with = "byte_fields::many")]
    pub args: Vec<Vec<u8>>,
    /// Whether the client speaks RESP3 (the reply is encoded for it).
    pub resp3: bool,
    /// Milliseconds left until the client request's deadline when sent.
    pub budget_ms: u32,
}

/// The answer to a [`ForwardRequest`]: the exact bytes to send the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardReply {
    /// The request answered.
    pub id: RequestId,
    /// The encoded RESP reply (in the protocol the request named).
    #[serde(with = "byte_fields::one")]
    pub reply: Vec<u8>,
}

/// The answer to [`Message::AntiEntropy`]: the responder's next message of
/// the session, or `None` when the session ended on its side without one
/// (after the initiator's last message). Anti-entropy sessions travel as
/// request/response because the transport is one-directional: the dialer
/// asks, the acceptor answers (see `server::anti_entropy`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AntiEntropyReply {
    /// The responder's message, if it has one.
    pub msg: Option<anti_entropy::Msg>,
}

/// One chunk of a partition streamed to a new owner on join or leave (a
/// request; see `server::rebalance`). The receiver merges every set into
/// its replica (never stores blindly), makes the merge durable, and answers
/// [`StreamAck`]. Chunks of one stream are numbered from 0 and sent one at a
/// time; the sender drops its copy only after every owner acknowledged the
/// chunk marked `last`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamChunk {
    /// Repeated in the [`StreamAck`].
    pub id: RequestId,
    /// The partition every key of the chunk belongs to (checked).
    pub partition: PartitionId,
    /// The chunk's number in its stream, from 0.
    pub seq: u64,
    /// Keys in ascending order with their whole sibling sets.
    pub entries: Vec<StreamEntry>,
    /// The partition ends with this chunk (it may be empty).
    pub last: bool,
}

/// One key of a [`StreamChunk`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEntry {
    pub key: Vec<u8>,
    /// The key's sibling set, in the `version` module's encoding (exactly
    /// the bytes the sender stores).
    pub siblings: Vec<u8>,
}

/// The answer to a [`StreamChunk`]: `Ok(keys merged)` once every set of the
/// chunk is merged and durable on the receiver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamAck {
    /// The request answered.
    pub id: RequestId,
    pub outcome: Result<u64, RemoteError>,
}

/// Why a replica could not serve a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteError {
    /// The budget ran out before the replica got to the request.
    DeadlinePassed,
    /// The replica is shedding load; try another.
    Overloaded,
    /// The replica's settings or ring disagree with the request (e.g. the
    /// partition does not match the key).
    Rejected(String),
    /// Storage failed on the replica.
    Storage(String),
    /// The request never got an answer: the transport could not reach the
    /// replica, or gave up waiting. Made by the sender for itself (so the
    /// coordinator moves on to a fallback at once); never sent.
    Unreachable(String),
}

/// An internode message. Variants are in wire order: append only (see the
/// module doc).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Handshake: who is talking.
    Hello(Hello),
    /// Handshake: proof of the cluster secret.
    HelloProof(HelloProof),
    /// A member list (push or reply).
    Gossip(GossipMessage),
    /// Gossip refused: cluster settings differ.
    GossipReject(GossipReject),
    /// Store a sibling set.
    Put(PutRequest),
    /// Answer to `Put`.
    PutAck(PutAck),
    /// Read a sibling set.
    Get(GetRequest),
    /// Answer to `Get`.
    GetReply(GetReply),
    /// Coordinate a client command (one-hop forward).
    Forward(ForwardRequest),
    /// Answer to `Forward`.
    ForwardReply(ForwardReply),
    /// One message of an anti-entropy session, from its initiator (a request).
    AntiEntropy(anti_entropy::Msg),
    /// Answer to `AntiEntropy`.
    AntiEntropyReply(AntiEntropyReply),
    /// A chunk of a partition handed to a new owner (join/leave).
    StreamChunk(StreamChunk),
    /// Answer to `StreamChunk`.
    StreamAck(StreamAck),
}

impl Message {
    /// The frame payload for this message.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.encode_into(&mut buf);
        buf
    }

    /// Append the frame payload for this message to `buf` (reuse one buffer
    /// per connection).
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        // Serializing into a growable Vec fails only if a Serialize impl
        // fails, and every type here is plain data.
        let bytes = postcard::to_extend(self, std::mem::take(buf))
            .unwrap_or_else(|e| unreachable!("plain data always serializes: {e}"));
        *buf = bytes;
    }

    /// Decode one frame payload. Garbage, truncation or trailing bytes give
    /// an error, never a panic or a huge allocation (postcard preallocates
    /// at most what the input could hold).
    pub fn decode(payload: &[u8]) -> Result<Message> {
        let (msg, rest) = postcard::take_from_bytes::<Message>(payload)
            .map_err(|e| Error::invalid(format!("malformed internode message: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::invalid(format!(
                "malformed internode message: {} trailing bytes",
                rest.len()
            )));
        }
        Ok(msg)
    }

    /// The message's name, for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::HelloProof(_) => "hello-proof",
            Message::Gossip(_) => "gossip",
            Message::GossipReject(_) => "gossip-reject",
            Message::Put(_) => "put",
            Message::PutAck(_) => "put-ack",
            Message::Get(_) => "get",
            Message::GetReply(_) => "get-reply",
            Message::Forward(_) => "forward",
            Message::ForwardReply(_) => "forward-reply",
            Message::AntiEntropy(_) => "anti-entropy",
            Message::AntiEntropyReply(_) => "anti-entropy-reply",
            Message::StreamChunk(_) => "stream-chunk",
            Message::StreamAck(_) => "stream-ack",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::membership::{
        ClusterSettings, GossipKind, Heartbeat, Incarnation, MemberDigest,
    };
    use proptest::prelude::*;

    #[test]
    fn byte_fields_keep_the_wire_form_of_a_plain_vec() {
        // The same message shape with plain (sequence-of-u8) fields.
        #[derive(Serialize)]
        struct PlainGet {
            id: RequestId,
            partition: PartitionId,
            key: Vec<u8>,
            budget_ms: u32,
        }
        let key = b"some key \x00\xff".to_vec();
        let fast = postcard::to_allocvec(&GetRequest {
            id: RequestId(7),
            partition: PartitionId(3),
            key: key.clone(),
            budget_ms: 900,
        })
        .expect("encode");
        let plain = postcard::to_allocvec(&PlainGet {
            id: RequestId(7),
            partition: PartitionId(3),
            key,
            budget_ms: 900,
        })
        .expect("encode");
        assert_eq!(fast, plain);
        #[derive(Serialize)]
        struct PlainReply {
            id: RequestId,
            outcome: Result<Option<Vec<u8>>, RemoteError>,
        }
        for outcome in [
            Ok(None),
            Ok(Some(vec![1, 2, 3])),
            Err(RemoteError::Overloaded),
        ] {
            let fast = postcard::to_allocvec(&GetReply {
                id: RequestId(1),
                outcome: outcome.clone(),
            })
            .expect("encode");
            let plain = postcard::to_allocvec(&PlainReply {
                id: RequestId(1),
                outcome,
            })
            .expect("encode");
            assert_eq!(fast, plain);
        }
    }

    fn node_id() -> impl Strategy<Value = NodeId> {
        any::<[u8; 16]>().prop_map(NodeId::from_bytes)
    }

    fn remote_error() -> impl Strategy<Value = RemoteError> {
        prop_oneof![
            Just(RemoteError::DeadlinePassed),
            Just(RemoteError::Overloaded),
            ".*".prop_map(RemoteError::Rejected),
            ".*".prop_map(RemoteError::Storage),
            ".*".prop_map(RemoteError::Unreachable),
        ]
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..64)
    }

    fn gossip() -> impl Strategy<Value = GossipMessage> {
        let digest = (
            node_id(),
            ".{0,20}",
            ".{0,20}",
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
        )
            .prop_map(|(id, addr, peer_addr, inc, hb, left)| MemberDigest {
                id,
                addr,
                peer_addr,
                incarnation: Incarnation(inc),
                heartbeat: Heartbeat(hb),
                left,
            });
        (
            ".{0,10}",
            any::<[u32; 4]>(),
            node_id(),
            ".{0,20}",
            any::<bool>(),
            prop::collection::vec(digest, 0..5),
        )
            .prop_map(
                |(name, [q, n, r, w], from, from_peer_addr, push, members)| GossipMessage {
                    settings: ClusterSettings {
                        name,
                        partitions: q,
                        replicas: n,
                        read_quorum: r,
                        write_quorum: w,
                    },
                    from,
                    from_peer_addr,
                    kind: if push {
                        GossipKind::Push
                    } else {
                        GossipKind::Reply
                    },
                    members,
                },
            )
    }

    fn message() -> impl Strategy<Value = Message> {
        let id = any::<u64>().prop_map(RequestId);
        prop_oneof![
            (node_id(), ".{0,20}", ".{0,10}", any::<[u8; 16]>()).prop_map(
                |(node_id, peer_addr, cluster, nonce)| Message::Hello(Hello {
                    node_id,
                    peer_addr,
                    cluster,
                    nonce
                })
            ),
            any::<[u8; 32]>().prop_map(|mac| Message::HelloProof(HelloProof { mac })),
            gossip().prop_map(Message::Gossip),
            (gossip(), ".*").prop_map(|(g, reason)| Message::GossipReject(GossipReject {
                from: g.from,
                from_peer_addr: g.from_peer_addr,
                settings: g.settings,
                reason
            })),
            (
                id.clone(),
                any::<u32>(),
                bytes(),
                bytes(),
                any::<u32>(),
                prop::option::of(node_id())
            )
                .prop_map(|(id, p, key, siblings, budget_ms, hint_for)| {
                    Message::Put(PutRequest {
                        id,
                        partition: PartitionId(p),
                        key,
                        siblings,
                        budget_ms,
                        hint_for,
                    })
                }),
            (id.clone(), prop::result::maybe_ok(Just(()), remote_error()))
                .prop_map(|(id, outcome)| Message::PutAck(PutAck { id, outcome })),
            (id.clone(), any::<u32>(), bytes(), any::<u32>()).prop_map(
                |(id, p, key, budget_ms)| Message::Get(GetRequest {
                    id,
                    partition: PartitionId(p),
                    key,
                    budget_ms
                })
            ),
            (
                id.clone(),
                prop::result::maybe_ok(prop::option::of(bytes()), remote_error())
            )
                .prop_map(|(id, outcome)| Message::GetReply(GetReply { id, outcome })),
            (
                id.clone(),
                prop::collection::vec(bytes(), 0..4),
                any::<bool>(),
                any::<u32>()
            )
                .prop_map(|(id, args, resp3, budget_ms)| Message::Forward(
                    ForwardRequest {
                        id,
                        args,
                        resp3,
                        budget_ms
                    }
                )),
            (id, bytes()).prop_map(|(id, reply)| Message::ForwardReply(ForwardReply { id, reply })),
            anti_entropy_msg().prop_map(Message::AntiEntropy),
            prop::option::of(anti_entropy_msg())
                .prop_map(|msg| Message::AntiEntropyReply(AntiEntropyReply { msg })),
            (
                any::<u64>().prop_map(RequestId),
                any::<u32>(),
                any::<u64>(),
                prop::collection::vec((bytes(), bytes()), 0..4),
                any::<bool>()
            )
                .prop_map(|(id, p, seq, entries, last)| Message::StreamChunk(
                    StreamChunk {
                        id,
                        partition: PartitionId(p),
                        seq,
                        entries: entries
                            .into_iter()
                            .map(|(key, siblings)| StreamEntry { key, siblings })
                            .collect(),
                        last
                    }
                )),
            (
                any::<u64>().prop_map(RequestId),
                prop::result::maybe_ok(any::<u64>(), remote_error())
            )
                .prop_map(|(id, outcome)| Message::StreamAck(StreamAck { id, outcome })),
        ]
    }

    fn anti_entropy_msg() -> impl Strategy<Value = anti_entropy::Msg> {
        use crate::cluster::anti_entropy::{
            Body, BucketKeys, KeyEntry, Msg, SessionId, VersionEntry,
        };
        use crate::cluster::merkle::{BucketIndex, KeyFingerprint, NodeHash, TreeShape};
        let hash = any::<[u8; 32]>().prop_map(NodeHash);
        let body = prop_oneof![
            (any::<u8>(), 0u32..21, hash.clone()).prop_map(|(version, bits, root)| Body::Root {
                version,
                shape: TreeShape::new(1 << bits).unwrap_or_default(),
                root,
            }),
            (
                any::<u8>(),
                prop::collection::vec(any::<u32>(), 0..4),
                prop::collection::vec(hash, 0..4)
            )
                .prop_map(|(depth, parents, hashes)| Body::Level {
                    depth,
                    parents,
                    hashes
                }),
            prop::collection::vec(
                (
                    any::<u32>(),
                    prop::collection::vec((bytes(), any::<[u8; 16]>()), 0..3)
                ),
                0..3
            )
            .prop_map(|buckets| Body::BucketKeys {
                buckets: buckets
                    .into_iter()
                    .map(|(b, entries)| BucketKeys {
                        bucket: BucketIndex(b),
                        entries: entries
                            .into_iter()
                            .map(|(key, f)| KeyEntry {
                                key,
                                fingerprint: KeyFingerprint(f)
                            })
                            .collect(),
                    })
                    .collect()
            }),
            (
                prop::collection::vec((bytes(), bytes()), 0..3),
                prop::collection::vec(bytes(), 0..3)
            )
                .prop_map(|(entries, want)| Body::Versions {
                    entries: entries
                        .into_iter()
                        .map(|(key, sibling_set)| VersionEntry { key, sibling_set })
                        .collect(),
                    want
                }),
            Just(Body::InSync),
            ".*".prop_map(|reason| Body::Abort { reason }),
        ];
        (any::<u64>(), any::<u32>(), body).prop_map(|(session, partition, body)| Msg {
            session: SessionId(session),
            partition,
            body,
        })
    }

    proptest! {
        #[test]
        fn every_message_survives_a_postcard_round_trip(msg in message()) {
            let bytes = msg.encode();
            prop_assert_eq!(Message::decode(&bytes).unwrap(), msg.clone());
            // encode_into appends to what the buffer holds.
            let mut buf = vec![0xAA];
            msg.encode_into(&mut buf);
            prop_assert_eq!(&buf[1..], &bytes[..]);
        }

        #[test]
        fn garbage_decodes_to_an_error_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            // Postcard accepts overlong varints, so a lucky garbage input may
            // decode; the property is that decoding returns, never panics.
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn corrupted_messages_decode_to_an_error_or_a_message_never_a_panic(
            msg in message(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut bytes = msg.encode();
            for (at, value) in flips {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn truncated_or_padded_messages_are_refused(msg in message(), cut in any::<prop::sample::Index>()) {
            let bytes = msg.encode();
            let cut = cut.index(bytes.len());
            prop_assert!(Message::decode(&bytes[..cut]).is_err());
            let mut padded = bytes.clone();
            padded.push(0);
            prop_assert!(Message::decode(&padded).is_err());
        }
    }

    #[test]
    fn a_huge_claimed_length_is_an_error_without_allocating_it() {
        // Put, id 1, partition 0, then a key length varint of ~2^63.
        let mut bytes = vec![4, 1, 0];
        bytes.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(Message::decode(&bytes).is_err());
    }

    #[test]
    fn the_preface_names_magic_and_version() {
        assert_eq!(&PREFACE, b"RKVP\x01");
        assert!(check_preface(&PREFACE).is_ok());
        assert!(check_preface(b"*1\r\n$").is_err());
        assert!(check_preface(b"RKVP\x02").is_err());
    }

    #[test]
    fn hello_proofs_need_the_secret_the_nonce_and_the_right_prover() {
        let (a, b) = (NodeId::from_peer_addr("a"), NodeId::from_peer_addr("b"));
        let nonce = [7u8; 16];
        let proof = HelloProof {
            mac: hello_proof(b"s3cret", &nonce, a),
        };
        assert!(verify_hello_proof(b"s3cret", &nonce, a, &proof));
        assert!(!verify_hello_proof(b"other", &nonce, a, &proof));
        assert!(!verify_hello_proof(b"s3cret", &[8u8; 16], a, &proof));
        assert!(!verify_hello_proof(b"s3cret", &nonce, b, &proof));
    }

    #[test]
    fn variant_indices_are_the_wire_order() {
        // Appending variants is compatible; reordering is not. Pin the first
        // byte of a few variants so a reorder fails here.
        let ack = Message::PutAck(PutAck {
            id: RequestId(0),
            outcome: Ok(()),
        });
        assert_eq!(ack.encode()[0], 5);
        let reply = Message::ForwardReply(ForwardReply {
            id: RequestId(0),
            reply: vec![],
        });
        assert_eq!(reply.encode()[0], 9);
        let ae = Message::AntiEntropyReply(AntiEntropyReply { msg: None });
        assert_eq!(ae.encode()[0], 11);
        let stream = Message::StreamAck(StreamAck {
            id: RequestId(0),
            outcome: Ok(0),
        });
        assert_eq!(stream.encode()[0], 13);
    }
}
