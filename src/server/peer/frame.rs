//! Frames of the peer protocol and their codec (see the module doc of
//! [`peer`](super) for the byte layout and why it looks this way).
//!
//! Encoding writes the prefix, header and payload straight into the
//! connection's write buffer, so a payload is copied once (into that buffer)
//! and never into an intermediate body. Decoding splits a whole body off the
//! read buffer without copying; payloads are slices of it.

use std::fmt;
use std::io;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The four bytes that open every peer connection, in both directions.
pub const MAGIC: [u8; 4] = *b"RKVP";

/// The protocol version this build speaks. Bumped on any change to the frame
/// or handshake layout; peers of different versions refuse each other.
pub const PROTOCOL_VERSION: u8 = 1;

/// Length of the preamble: [`MAGIC`] followed by the version byte.
pub const PREAMBLE_LEN: usize = 5;

/// Length of the handshake nonces and of an HMAC-SHA256 proof.
pub const NONCE_LEN: usize = 32;

/// Length of an HMAC-SHA256 proof.
pub const PROOF_LEN: usize = 32;

/// Size of the length prefix in front of every frame body.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// The maximum body size accepted while the handshake is running. Hello and
/// proof frames are tiny; an unauthenticated peer must not be able to make us
/// buffer the full data-phase limit.
pub const HANDSHAKE_MAX_FRAME: usize = 4 * 1024;

/// The longest node id or cluster name a hello frame may carry.
pub const MAX_NAME_LEN: usize = 255;

/// The preamble this build sends: `RKVP` and [`PROTOCOL_VERSION`].
pub fn preamble() -> [u8; PREAMBLE_LEN] {
    let [a, b, c, d] = MAGIC;
    [a, b, c, d, PROTOCOL_VERSION]
}

/// Identifies a request on one connection; chosen by the requester, echoed in
/// the response. Ids are never reused while a connection is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The frame kind, the first byte of every body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Hello = 0x01,
    Proof = 0x02,
    Ready = 0x03,
    Refuse = 0x04,
    Request = 0x10,
    Response = 0x11,
    Failure = 0x12,
    OneWay = 0x13,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0x01 => FrameKind::Hello,
            0x02 => FrameKind::Proof,
            0x03 => FrameKind::Ready,
            0x04 => FrameKind::Refuse,
            0x10 => FrameKind::Request,
            0x11 => FrameKind::Response,
            0x12 => FrameKind::Failure,
            0x13 => FrameKind::OneWay,
            _ => return None,
        })
    }
}

/// The greeting each side sends first after the preamble.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender's node id (opaque to the transport; at most 255 bytes).
    pub node_id: String,
    /// The cluster the sender belongs to; both sides must agree.
    pub cluster: String,
    /// Whether the sender has a cluster secret and will prove it.
    pub wants_auth: bool,
    /// A fresh random challenge for the other side's proof.
    pub nonce: [u8; NONCE_LEN],
}

/// Bit 0 of the hello flags: the sender has a cluster secret.
const HELLO_FLAG_AUTH: u8 = 0b0000_0001;

/// One frame of the peer protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Handshake: who I am, which cluster, my challenge.
    Hello(Hello),
    /// Handshake: HMAC-SHA256 over the transcript, proving the cluster secret.
    Proof([u8; PROOF_LEN]),
    /// Handshake: the acceptor admits the dialer; data frames may follow.
    Ready,
    /// Handshake: the sender refuses the other side and will close; a reason
    /// for the other side's log.
    Refuse(String),
    /// A request that expects exactly one [`Frame::Response`] or
    /// [`Frame::Failure`] with the same id. `budget` is the time the requester
    /// is still willing to wait when the frame was written.
    Request {
        id: RequestId,
        budget: Duration,
        payload: Bytes,
    },
    /// The answer to the request with this id.
    Response { id: RequestId, payload: Bytes },
    /// The request with this id got no answer; the reason is for logs.
    Failure { id: RequestId, reason: String },
    /// A message that expects no answer (gossip).
    OneWay { payload: Bytes },
}

/// Why a frame body could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    #[error("{kind:?} frame truncated: {len} body bytes")]
    Truncated { kind: FrameKind, len: usize },
    #[error("{kind:?} frame has {extra} trailing bytes")]
    Trailing { kind: FrameKind, extra: usize },
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("{what} of {len} bytes is longer than {MAX_NAME_LEN}")]
    NameTooLong { what: &'static str, len: usize },
}

impl From<FrameError> for io::Error {
    fn from(e: FrameError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

impl Frame {
    /// The kind byte this frame is written with.
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Hello(_) => FrameKind::Hello,
            Frame::Proof(_) => FrameKind::Proof,
            Frame::Ready => FrameKind::Ready,
            Frame::Refuse(_) => FrameKind::Refuse,
            Frame::Request { .. } => FrameKind::Request,
            Frame::Response { .. } => FrameKind::Response,
            Frame::Failure { .. } => FrameKind::Failure,
            Frame::OneWay { .. } => FrameKind::OneWay,
        }
    }

    /// The size of the body (everything after the length prefix).
    pub fn body_len(&self) -> usize {
        1 + match self {
            Frame::Hello(h) => 1 + NONCE_LEN + 1 + h.node_id.len() + 1 + h.cluster.len(),
            Frame::Proof(_) => PROOF_LEN,
            Frame::Ready => 0,
            Frame::Refuse(reason) => reason.len(),
            Frame::Request { payload, .. } => 8 + 4 + payload.len(),
            Frame::Response { payload, .. } => 8 + payload.len(),
            Frame::Failure { reason, .. } => 8 + reason.len(),
            Frame::OneWay { payload } => payload.len(),
        }
    }

    /// The size on the wire, length prefix included.
    pub fn wire_len(&self) -> usize {
        LENGTH_PREFIX_LEN + self.body_len()
    }

    /// The body size of a request carrying `payload_len` bytes: what the
    /// maximum frame size is checked against before a request is queued.
    pub fn request_body_len(payload_len: usize) -> usize {
        1 + 8 + 4 + payload_len
    }

    /// Writes the body (without the length prefix).
    fn write_body(&self, dst: &mut BytesMut) {
        dst.put_u8(self.kind() as u8);
        match self {
            Frame::Hello(h) => {
                dst.put_u8(if h.wants_auth { HELLO_FLAG_AUTH } else { 0 });
                dst.put_slice(&h.nonce);
                put_short_str(dst, &h.node_id);
                put_short_str(dst, &h.cluster);
            }
            Frame::Proof(mac) => dst.put_slice(mac),
            Frame::Ready => {}
            Frame::Refuse(reason) => dst.put_slice(reason.as_bytes()),
            Frame::Request {
                id,
                budget,
                payload,
            } => {
                dst.put_u64(id.0);
                dst.put_u32(budget_millis(*budget));
                dst.put_slice(payload);
            }
            Frame::Response { id, payload } => {
                dst.put_u64(id.0);
                dst.put_slice(payload);
            }
            Frame::Failure { id, reason } => {
                dst.put_u64(id.0);
                dst.put_slice(reason.as_bytes());
            }
            Frame::OneWay { payload } => dst.put_slice(payload),
        }
    }

    /// Parses one body (the bytes after the length prefix). Payloads are
    /// zero-copy slices of `body`.
    pub fn decode_body(mut body: Bytes) -> Result<Frame, FrameError> {
        let Some(&kind_byte) = body.first() else {
            return Err(FrameError::Empty);
        };
        let kind = FrameKind::from_byte(kind_byte).ok_or(FrameError::UnknownKind(kind_byte))?;
        let len = body.len();
        body.advance(1);
        let truncated = FrameError::Truncated { kind, len };
        let frame = match kind {
            FrameKind::Hello => {
                if body.remaining() < 1 + NONCE_LEN {
                    return Err(truncated);
                }
                let flags = body.get_u8();
                let mut nonce = [0u8; NONCE_LEN];
                body.copy_to_slice(&mut nonce);
                let node_id = get_short_str(&mut body, "node id").ok_or(truncated.clone())??;
                let cluster = get_short_str(&mut body, "cluster name").ok_or(truncated)??;
                Frame::Hello(Hello {
                    node_id,
                    cluster,
                    wants_auth: flags & HELLO_FLAG_AUTH != 0,
                    nonce,
                })
            }
            FrameKind::Proof => {
                if body.remaining() < PROOF_LEN {
                    return Err(truncated);
                }
                let mut mac = [0u8; PROOF_LEN];
                body.copy_to_slice(&mut mac);
                Frame::Proof(mac)
            }
            FrameKind::Ready => Frame::Ready,
            FrameKind::Refuse => Frame::Refuse(utf8(body.split_off(0), "refusal reason")?),
            FrameKind::Request => {
                if body.remaining() < 12 {
                    return Err(truncated);
                }
                let id = RequestId(body.get_u64());
                let budget = Duration::from_millis(u64::from(body.get_u32()));
                Frame::Request {
                    id,
                    budget,
                    payload: body.split_off(0),
                }
            }
            FrameKind::Response => {
                if body.remaining() < 8 {
                    return Err(truncated);
                }
                let id = RequestId(body.get_u64());
                Frame::Response {
                    id,
                    payload: body.split_off(0),
                }
            }
            FrameKind::Failure => {
                if body.remaining() < 8 {
                    return Err(truncated);
                }
                let id = RequestId(body.get_u64());
                Frame::Failure {
                    id,
                    reason: utf8(body.split_off(0), "failure reason")?,
                }
            }
            FrameKind::OneWay => Frame::OneWay {
                payload: body.split_off(0),
            },
        };
        if body.has_remaining() {
            return Err(FrameError::Trailing {
                kind,
                extra: body.remaining(),
            });
        }
        Ok(frame)
    }
}

/// A request's remaining budget in whole milliseconds, rounded up so that a
/// request with 0.4 ms left is not mistaken for an expired one, and saturated
/// at `u32::MAX` (about 49 days: longer deadlines mean "no hurry").
fn budget_millis(budget: Duration) -> u32 {
    let millis = budget.as_nanos().div_ceil(1_000_000);
    u32::try_from(millis).unwrap_or(u32::MAX)
}

fn put_short_str(dst: &mut BytesMut, s: &str) {
    // Lengths were checked when the hello was built (`Hello::validate`), so
    // the truncation below cannot happen for frames this build writes.
    let len = s.len().min(MAX_NAME_LEN);
    dst.put_u8(len as u8);
    dst.put_slice(&s.as_bytes()[..len]);
}

/// Reads a length-prefixed string; `None` when the body is too short.
fn get_short_str(body: &mut Bytes, what: &'static str) -> Option<Result<String, FrameError>> {
    if !body.has_remaining() {
        return None;
    }
    let len = usize::from(body.get_u8());
    if body.remaining() < len {
        return None;
    }
    Some(utf8(body.split_to(len), what))
}

fn utf8(bytes: Bytes, what: &'static str) -> Result<String, FrameError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| FrameError::NotUtf8(what))
}

impl Hello {
    /// Checks the limits the wire format imposes on names.
    pub fn validate(&self) -> Result<(), FrameError> {
        for (what, s) in [("node id", &self.node_id), ("cluster name", &self.cluster)] {
            if s.len() > MAX_NAME_LEN {
                return Err(FrameError::NameTooLong { what, len: s.len() });
            }
        }
        Ok(())
    }
}

/// The codec of a peer connection after the preamble: length-prefixed frames
/// with a maximum body size.
///
/// Our own rather than tokio-util's `LengthDelimitedCodec`: the framing is
/// four lines either way, and owning it lets the oversize error name both the
/// announced size and the limit, and lets a zero-length body be refused.
#[derive(Debug)]
pub struct PeerCodec {
    max_frame: usize,
}

impl PeerCodec {
    /// A codec that refuses bodies longer than `max_frame` bytes in either
    /// direction.
    pub fn new(max_frame: usize) -> Self {
        PeerCodec { max_frame }
    }

    /// The largest body accepted.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Changes the largest body accepted (raised once the handshake is done).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }
}

impl Decoder for PeerCodec {
    type Item = Frame;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Frame>> {
        let Some(prefix) = src.get(..LENGTH_PREFIX_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > self.max_frame {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "frame of {len} bytes exceeds the maximum of {}",
                    self.max_frame
                ),
            ));
        }
        let total = LENGTH_PREFIX_LEN + len;
        if src.len() < total {
            // Bounded by the maximum just checked.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(LENGTH_PREFIX_LEN);
        let body = src.split_to(len).freeze();
        Ok(Some(Frame::decode_body(body)?))
    }
}

impl Encoder<&Frame> for PeerCodec {
    type Error = io::Error;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> io::Result<()> {
        let body_len = frame.body_len();
        if body_len > self.max_frame() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{:?} frame of {body_len} bytes exceeds the maximum of {}",
                    frame.kind(),
                    self.max_frame()
                ),
            ));
        }
        // The maximum frame size is at most u32::MAX (checked by the config),
        // so the cast cannot truncate.
        dst.reserve(LENGTH_PREFIX_LEN + body_len);
        dst.put_u32(body_len as u32);
        frame.write_body(dst);
        Ok(())
    }
}

impl Encoder<Frame> for PeerCodec {
    type Error = io::Error;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> io::Result<()> {
        self.encode(&frame, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(frame: &Frame) -> BytesMut {
        let mut buf = BytesMut::new();
        PeerCodec::new(1 << 20)
            .encode(frame, &mut buf)
            .expect("test frames fit");
        buf
    }

    #[test]
    fn request_layout_is_length_kind_id_budget_payload() {
        let frame = Frame::Request {
            id: RequestId(0x0102_0304_0506_0708),
            budget: Duration::from_millis(1500),
            payload: Bytes::from_static(b"hi"),
        };
        let bytes = encode(&frame);
        assert_eq!(
            &bytes[..],
            &[
                0, 0, 0, 15,   // body length
                0x10, // kind: request
                1, 2, 3, 4, 5, 6, 7, 8, // request id
                0, 0, 0x05, 0xdc, // budget: 1500 ms
                b'h', b'i', // payload
            ]
        );
        assert_eq!(bytes.len(), frame.wire_len());
    }

    #[test]
    fn hello_layout_is_flags_nonce_and_two_short_strings() {
        let frame = Frame::Hello(Hello {
            node_id: "n1".into(),
            cluster: "c".into(),
            wants_auth: true,
            nonce: [7; NONCE_LEN],
        });
        let bytes = encode(&frame);
        let mut expected = vec![0, 0, 0, 39, 0x01, 0x01];
        expected.extend_from_slice(&[7; NONCE_LEN]);
        expected.extend_from_slice(&[2, b'n', b'1', 1, b'c']);
        assert_eq!(&bytes[..], &expected[..]);
    }

    #[test]
    fn decoder_waits_for_a_whole_frame_then_yields_it() {
        let frame = Frame::Response {
            id: RequestId(9),
            payload: Bytes::from_static(b"value"),
        };
        let whole = encode(&frame);
        let mut codec = PeerCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            buf.put_u8(*byte);
            let got = codec.decode(&mut buf).expect("valid prefix");
            if i + 1 < whole.len() {
                assert_eq!(got, None, "yielded a frame after {} bytes", i + 1);
            } else {
                assert_eq!(got, Some(frame.clone()));
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn decoder_refuses_a_length_prefix_over_the_maximum() {
        let mut codec = PeerCodec::new(1024);
        let mut buf = BytesMut::new();
        buf.put_u32(1025);
        buf.put_u8(FrameKind::OneWay as u8);
        let err = codec.decode(&mut buf).expect_err("oversized frame");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn encoder_refuses_a_body_over_the_maximum() {
        let mut codec = PeerCodec::new(8);
        let frame = Frame::OneWay {
            payload: Bytes::from(vec![0; 8]),
        };
        let mut buf = BytesMut::new();
        assert!(codec.encode(&frame, &mut buf).is_err());
        assert!(buf.is_empty(), "nothing written for a refused frame");
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        let cases: &[(&[u8], FrameError)] = &[
            (&[], FrameError::Empty),
            (&[0x7f], FrameError::UnknownKind(0x7f)),
            (
                &[0x10, 0, 0, 0],
                FrameError::Truncated {
                    kind: FrameKind::Request,
                    len: 4,
                },
            ),
            (
                &[0x03, 1],
                FrameError::Trailing {
                    kind: FrameKind::Ready,
                    extra: 1,
                },
            ),
            (&[0x04, 0xff], FrameError::NotUtf8("refusal reason")),
        ];
        for (body, expected) in cases {
            assert_eq!(
                Frame::decode_body(Bytes::copy_from_slice(body)).as_ref(),
                Err(expected),
                "body {body:?}"
            );
        }
    }

    #[test]
    fn budgets_round_up_to_whole_milliseconds_and_saturate() {
        assert_eq!(budget_millis(Duration::from_micros(400)), 1);
        assert_eq!(budget_millis(Duration::ZERO), 0);
        assert_eq!(budget_millis(Duration::from_secs(u64::MAX)), u32::MAX);
    }

    fn any_frame() -> impl Strategy<Value = Frame> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from);
        let name = || "[a-z0-9:.-]{0,40}";
        prop_oneof![
            (name(), name(), any::<bool>(), any::<[u8; NONCE_LEN]>()).prop_map(
                |(node_id, cluster, wants_auth, nonce)| Frame::Hello(Hello {
                    node_id,
                    cluster,
                    wants_auth,
                    nonce
                })
            ),
            any::<[u8; PROOF_LEN]>().prop_map(Frame::Proof),
            Just(Frame::Ready),
            ".{0,40}".prop_map(Frame::Refuse),
            (any::<u64>(), 0..u32::MAX, bytes()).prop_map(|(id, ms, payload)| Frame::Request {
                id: RequestId(id),
                budget: Duration::from_millis(u64::from(ms)),
                payload
            }),
            (any::<u64>(), bytes()).prop_map(|(id, payload)| Frame::Response {
                id: RequestId(id),
                payload
            }),
            (any::<u64>(), ".{0,40}").prop_map(|(id, reason)| Frame::Failure {
                id: RequestId(id),
                reason
            }),
            bytes().prop_map(|payload| Frame::OneWay { payload }),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip_through_the_codec(frames in proptest::collection::vec(any_frame(), 1..8)) {
            let mut codec = PeerCodec::new(1 << 20);
            let mut buf = BytesMut::new();
            for frame in &frames {
                codec.encode(frame, &mut buf).expect("fits");
            }
            let expected_len: usize = frames.iter().map(Frame::wire_len).sum();
            prop_assert_eq!(buf.len(), expected_len);
            for frame in &frames {
                prop_assert_eq!(codec.decode(&mut buf).expect("valid"), Some(frame.clone()));
            }
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_streams_never_panic_the_decoder(
            stream in proptest::collection::vec(any::<u8>(), 0..256),
            max in 0usize..64,
        ) {
            let mut codec = PeerCodec::new(max);
            let mut buf = BytesMut::from(&stream[..]);
            // Decode until the codec wants more bytes or gives up on the stream.
            while let Ok(Some(frame)) = codec.decode(&mut buf) {
                prop_assert!(frame.body_len() <= max);
            }
        }

        #[test]
        fn arbitrary_bodies_never_panic_the_parser(body in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Frame::decode_body(Bytes::from(body));
        }
    }
}
