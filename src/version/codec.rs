//! The storage encoding of a [`SiblingSet`], and the bounded decoder shared
//! with the context tokens.
//!
//! # Format 1, byte by byte
//!
//! `varint` is unsigned LEB128 (7 bits per byte, low bits first, at most 10
//! bytes, no redundant trailing zero bytes: every value has exactly one
//! encoding, so equal sets encode to equal bytes and Merkle hashes over the
//! encoding agree across replicas). `actor` is the 8-byte big-endian `u64`
//! (random ids do not shrink under a varint).
//!
//! ```text
//! u8       format            = 0x01
//! varint   version_count
//! version_count times, in strictly increasing dot order (actor, counter):
//!   actor    dot.actor
//!   varint   dot.counter       >= 1
//!   varint   written_at_ms
//!   u8       flags             bit 0: tombstone, bit 1: has expiry; others 0
//!   varint   expires_at_ms     only if bit 1
//!   varint   past_len
//!   past_len times, in strictly increasing actor order:
//!     actor    actor
//!     varint   counter         >= 1
//!     varint   timestamp_ms
//!   varint   value_len         only if not a tombstone
//!   value_len bytes value      only if not a tombstone
//! ```
//!
//! Nothing may follow the last version. There is no checksum: the set is
//! stored as a value of the storage engine, whose log records and SSTable
//! blocks carry CRC32C already.
//!
//! The decoder never trusts a length: every count is bounded both by a fixed
//! ceiling and by the bytes left (each item takes at least a known number of
//! bytes), so garbage can neither panic nor make it allocate more than the
//! input's size. Only whole sets are encoded: there is deliberately no
//! single-version encoding for replication (see "Replicate whole sets" in
//! the module doc of [`crate::version`]).

use std::path::PathBuf;

use bytes::Bytes;

use super::clock::{ActorId, ClockEntry, Dot, VersionVector};
use super::siblings::{obsolete_flags, Payload, SiblingSet, Version};
use crate::error::Error;

/// The first byte of every encoded sibling set written by this build.
pub const FORMAT_V1: u8 = 0x01;

/// Most versions a decoded set may claim (far above [`SiblingLimits`]'
/// default `max`, which client writes cannot pass but merges can).
///
/// [`SiblingLimits`]: super::siblings::SiblingLimits
pub const MAX_DECODED_VERSIONS: usize = 65_536;

/// Most entries a decoded clock may claim (clocks are pruned near 10).
pub const MAX_DECODED_CLOCK_ENTRIES: usize = 4_096;

const FLAG_TOMBSTONE: u8 = 0b01;
const FLAG_HAS_EXPIRY: u8 = 0b10;

/// Smallest encodings, to bound counts by the bytes left.
const MIN_ENTRY_BYTES: usize = 8 + 1 + 1;
const MIN_VERSION_BYTES: usize = 8 + 1 + 1 + 1 + 1;

/// Why some bytes are not a valid encoding, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("byte {offset}: {detail}")]
pub struct CodecError {
    /// Offset into the decoded buffer where the problem was found.
    pub offset: usize,
    pub detail: &'static str,
}

impl CodecError {
    /// The storage engine's form: corruption of the value stored at
    /// `value_offset` in `file`.
    pub fn in_file(self, file: impl Into<PathBuf>, value_offset: u64) -> Error {
        Error::corruption(
            file,
            value_offset.saturating_add(self.offset as u64),
            format!("malformed sibling set: {}", self.detail),
        )
    }
}

impl From<CodecError> for Error {
    /// For callers without a file to name (replication, tests).
    fn from(e: CodecError) -> Self {
        Error::invalid(format!("malformed sibling set at {e}"))
    }
}

/// Appends `value` as an unsigned LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub(crate) fn put_actor(out: &mut Vec<u8>, actor: ActorId) {
    out.extend_from_slice(&actor.0.to_be_bytes());
}

pub(crate) fn put_clock(out: &mut Vec<u8>, clock: &VersionVector) {
    put_varint(out, clock.len() as u64);
    for entry in clock {
        put_actor(out, entry.actor);
        put_varint(out, entry.counter);
        put_varint(out, entry.timestamp_ms);
    }
}

/// A cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn err(&self, detail: &'static str) -> CodecError {
        CodecError {
            offset: self.pos,
            detail,
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, CodecError> {
        let byte = *self.buf.get(self.pos).ok_or(self.err("truncated"))?;
        self.pos += 1;
        Ok(byte)
    }

    pub(crate) fn take(&mut self, len: usize) -> Result<&'a [u8], CodecError> {
        if len > self.remaining() {
            return Err(self.err("truncated"));
        }
        let bytes = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(bytes)
    }

    pub(crate) fn actor(&mut self) -> Result<ActorId, CodecError> {
        let bytes = self.take(8)?;
        let mut raw = [0u8; 8];
        raw.copy_from_slice(bytes);
        Ok(ActorId(u64::from_be_bytes(raw)))
    }

    pub(crate) fn varint(&mut self) -> Result<u64, CodecError> {
        let start = self.pos;
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                self.pos = start;
                return Err(self.err("varint overflows 64 bits"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                if byte == 0 && shift > 0 {
                    self.pos = start;
                    return Err(self.err("varint has a redundant trailing zero byte"));
                }
                return Ok(value);
            }
        }
        self.pos = start;
        Err(self.err("varint longer than 10 bytes"))
    }

    /// A count of items each at least `min_item_bytes` long, at most `max`.
    pub(crate) fn count(&mut self, max: usize, min_item_bytes: usize) -> Result<usize, CodecError> {
        let start = self.pos;
        let count = self.varint()?;
        let fits = self.remaining() / min_item_bytes.max(1);
        if count > max as u64 || count > fits as u64 {
            self.pos = start;
            return Err(self.err("count larger than the data could hold"));
        }
        Ok(count as usize)
    }

    pub(crate) fn clock(&mut self) -> Result<VersionVector, CodecError> {
        let start = self.pos;
        let len = self.count(MAX_DECODED_CLOCK_ENTRIES, MIN_ENTRY_BYTES)?;
        let mut entries = Vec::with_capacity(len);
        for _ in 0..len {
            let actor = self.actor()?;
            let counter = self.varint()?;
            let timestamp_ms = self.varint()?;
            entries.push(ClockEntry {
                actor,
                counter,
                timestamp_ms,
            });
        }
        VersionVector::from_sorted_entries(entries).ok_or(CodecError {
            offset: start,
            detail: "clock entries out of order, repeated, or with counter 0",
        })
    }

    pub(crate) fn finish(&self) -> Result<(), CodecError> {
        if self.remaining() != 0 {
            return Err(self.err("trailing bytes after the end"));
        }
        Ok(())
    }
}

impl SiblingSet {
    /// Appends the format-1 encoding of the set to `out` (see the module doc
    /// of this file for the layout).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len_hint());
        out.push(FORMAT_V1);
        put_varint(out, self.len() as u64);
        for version in self.versions() {
            put_actor(out, version.dot.actor);
            put_varint(out, version.dot.counter);
            put_varint(out, version.written_at_ms);
            let mut flags = 0;
            if version.is_tombstone() {
                flags |= FLAG_TOMBSTONE;
            }
            if version.expires_at_ms.is_some() {
                flags |= FLAG_HAS_EXPIRY;
            }
            out.push(flags);
            if let Some(at) = version.expires_at_ms {
                put_varint(out, at);
            }
            put_clock(out, &version.past);
            if let Payload::Value(value) = &version.payload {
                put_varint(out, value.len() as u64);
                out.extend_from_slice(value);
            }
        }
    }

    /// The encoding as a new buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::new();
        self.encode(&mut out);
        Bytes::from(out)
    }

    /// Decodes a set, copying its values out of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<SiblingSet, CodecError> {
        decode_set(bytes, |range| Bytes::copy_from_slice(&bytes[range]))
    }

    /// Decodes a set whose values share `buf`'s memory (no copy).
    pub fn decode_shared(buf: &Bytes) -> Result<SiblingSet, CodecError> {
        decode_set(buf, |range| buf.slice(range))
    }

    fn encoded_len_hint(&self) -> usize {
        self.versions()
            .iter()
            .map(|v| {
                let value = v.value().map_or(0, Bytes::len);
                MIN_VERSION_BYTES + 20 + v.past.len() * 18 + value + 10
            })
            .sum::<usize>()
            + 11
    }
}

/// The header of one version, as the decoders read it.
struct VersionHead {
    dot: Dot,
    written_at_ms: u64,
    tombstone: bool,
    expires_at_ms: Option<u64>,
}

fn read_format(reader: &mut Reader<'_>) -> Result<(), CodecError> {
    match reader.u8()? {
        FORMAT_V1 => Ok(()),
        _ => Err(CodecError {
            offset: 0,
            detail: "unknown sibling set format version",
        }),
    }
}

fn read_head(reader: &mut Reader<'_>, previous: Option<Dot>) -> Result<VersionHead, CodecError> {
    let start = reader.position();
    let actor = reader.actor()?;
    let counter = reader.varint()?;
    let dot = Dot::new(actor, counter);
    if counter == 0 || previous.is_some_and(|p| p >= dot) {
        return Err(CodecError {
            offset: start,
            detail: "dots out of order, repeated, or with counter 0",
        });
    }
    let written_at_ms = reader.varint()?;
    let flags = reader.u8()?;
    if flags & !(FLAG_TOMBSTONE | FLAG_HAS_EXPIRY) != 0 {
        return Err(reader.err("unknown version flags"));
    }
    let expires_at_ms = if flags & FLAG_HAS_EXPIRY != 0 {
        Some(reader.varint()?)
    } else {
        None
    };
    Ok(VersionHead {
        dot,
        written_at_ms,
        tombstone: flags & FLAG_TOMBSTONE != 0,
        expires_at_ms,
    })
}

/// Reads a value's length and returns its byte range.
fn read_value_range(reader: &mut Reader<'_>) -> Result<std::ops::Range<usize>, CodecError> {
    let len = reader.varint()?;
    let len = usize::try_from(len).map_err(|_| reader.err("value length overflows"))?;
    let start = reader.position();
    reader.take(len)?;
    Ok(start..start + len)
}

fn decode_set(
    bytes: &[u8],
    value: impl Fn(std::ops::Range<usize>) -> Bytes,
) -> Result<SiblingSet, CodecError> {
    let mut reader = Reader::new(bytes);
    read_format(&mut reader)?;
    let count = reader.count(MAX_DECODED_VERSIONS, MIN_VERSION_BYTES)?;
    let mut versions = Vec::with_capacity(count);
    let mut previous = None;
    for _ in 0..count {
        let head = read_head(&mut reader, previous)?;
        previous = Some(head.dot);
        let past = reader.clock()?;
        let payload = if head.tombstone {
            Payload::Tombstone
        } else {
            Payload::Value(value(read_value_range(&mut reader)?))
        };
        versions.push(Version {
            dot: head.dot,
            past,
            payload,
            expires_at_ms: head.expires_at_ms,
            written_at_ms: head.written_at_ms,
        });
    }
    reader.finish()?;
    if obsolete_flags(&versions).contains(&true) {
        return Err(CodecError {
            offset: 0,
            detail: "a version supersedes another in the same set",
        });
    }
    Ok(SiblingSet::from_normalized(versions))
}

/// What a read sees in an encoded set, decoded without building the set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LiveValues {
    /// Absent, deleted or expired.
    Absent,
    /// Exactly one live version (the common case).
    One {
        value: Bytes,
        expires_at_ms: Option<u64>,
    },
    /// Two or more live versions, by dot.
    Siblings(Vec<Bytes>),
}

/// The read fast path: the live values at `now_ms` of the encoded set in
/// `buf`, sharing its memory. It checks the structure as strictly as
/// [`SiblingSet::decode_shared`] except for the (quadratic) check that no
/// version supersedes another, which holds for every set this module
/// encodes. Allocates only when the key has siblings.
pub fn decode_live_values(buf: &Bytes, now_ms: u64) -> Result<LiveValues, CodecError> {
    let mut reader = Reader::new(buf);
    read_format(&mut reader)?;
    let count = reader.count(MAX_DECODED_VERSIONS, MIN_VERSION_BYTES)?;
    let mut live = LiveValues::Absent;
    let mut previous = None;
    for _ in 0..count {
        let head = read_head(&mut reader, previous)?;
        previous = Some(head.dot);
        skip_clock(&mut reader)?;
        if head.tombstone {
            continue;
        }
        let range = read_value_range(&mut reader)?;
        if head.expires_at_ms.is_some_and(|at| now_ms > at) {
            continue;
        }
        let value = buf.slice(range);
        live = match live {
            LiveValues::Absent => LiveValues::One {
                value,
                expires_at_ms: head.expires_at_ms,
            },
            LiveValues::One { value: first, .. } => LiveValues::Siblings(vec![first, value]),
            LiveValues::Siblings(mut values) => {
                values.push(value);
                LiveValues::Siblings(values)
            }
        };
    }
    reader.finish()?;
    Ok(live)
}

/// Checks and skips an encoded clock without building it.
fn skip_clock(reader: &mut Reader<'_>) -> Result<(), CodecError> {
    let start = reader.position();
    let len = reader.count(MAX_DECODED_CLOCK_ENTRIES, MIN_ENTRY_BYTES)?;
    let mut previous: Option<ActorId> = None;
    for _ in 0..len {
        let actor = reader.actor()?;
        let counter = reader.varint()?;
        reader.varint()?;
        if counter == 0 || previous.is_some_and(|p| p >= actor) {
            return Err(CodecError {
                offset: start,
                detail: "clock entries out of order, repeated, or with counter 0",
            });
        }
        previous = Some(actor);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::clock::tests::arb_clock;
    use proptest::prelude::*;

    fn arb_version() -> impl Strategy<Value = Version> {
        (
            1u64..6,
            1u64..1_000_000,
            arb_clock(),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
            prop::option::of(any::<u64>()),
            any::<u64>(),
        )
            .prop_map(
                |(actor, counter, past, value, expires_at_ms, written_at_ms)| Version {
                    dot: Dot::new(ActorId(actor), counter),
                    past,
                    payload: value.map_or(Payload::Tombstone, |v| Payload::Value(Bytes::from(v))),
                    expires_at_ms,
                    written_at_ms,
                },
            )
    }

    fn arb_set() -> impl Strategy<Value = SiblingSet> {
        prop::collection::vec(arb_version(), 0..6).prop_map(SiblingSet::from_versions)
    }

    fn sample() -> SiblingSet {
        let mut set = SiblingSet::new();
        set.write(
            ActorId(7),
            &VersionVector::new(),
            Payload::Value(Bytes::from_static(b"hi")),
            Some(500),
            300,
        );
        set.write(
            ActorId(9),
            &VersionVector::new(),
            Payload::Tombstone,
            None,
            301,
        );
        set
    }

    #[test]
    fn format_one_layout_is_as_documented() {
        let mut set = SiblingSet::new();
        set.write(
            ActorId(7),
            &VersionVector::new(),
            Payload::Value(Bytes::from_static(b"hi")),
            Some(500),
            300,
        );
        let bytes = set.to_bytes();
        let expected: &[u8] = &[
            0x01, // format
            0x01, // one version
            0, 0, 0, 0, 0, 0, 0, 7,    // dot.actor
            0x01, // dot.counter
            0xac, 0x02, // written_at_ms = 300
            0b10, // flags: has expiry
            0xf4, 0x03, // expires_at_ms = 500
            0x00, // empty past
            0x02, b'h', b'i', // value
        ];
        assert_eq!(bytes.as_ref(), expected);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().to_bytes();
        for len in 0..bytes.len() {
            assert!(
                SiblingSet::decode(&bytes[..len]).is_err(),
                "prefix of {len} bytes"
            );
            assert!(
                decode_live_values(&bytes.slice(..len), 0).is_err(),
                "prefix of {len} bytes"
            );
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(
            SiblingSet::decode(&longer).unwrap_err().detail,
            "trailing bytes after the end"
        );
    }

    #[test]
    fn unknown_format_and_flags_are_refused() {
        let mut bytes = sample().to_bytes().to_vec();
        bytes[0] = 2;
        let err = SiblingSet::decode(&bytes).unwrap_err();
        assert_eq!(err.detail, "unknown sibling set format version");
        assert_eq!(
            Error::from(err).to_resp(),
            "ERR malformed sibling set at byte 0: unknown sibling set format version"
        );
        let mut bytes = sample().to_bytes().to_vec();
        bytes[13] |= 0x80; // first version's flags byte
        assert_eq!(
            SiblingSet::decode(&bytes).unwrap_err().detail,
            "unknown version flags"
        );
    }

    #[test]
    fn huge_counts_fail_without_allocating() {
        // Claims 2^63 versions, then 2^40 clock entries, in a few bytes.
        let mut bytes = vec![FORMAT_V1];
        put_varint(&mut bytes, 1 << 63);
        assert!(SiblingSet::decode(&bytes).is_err());
        let mut bytes = vec![FORMAT_V1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0];
        put_varint(&mut bytes, 1 << 40);
        bytes.extend_from_slice(&[0; 64]);
        let err = SiblingSet::decode(&bytes).unwrap_err();
        assert_eq!(err.detail, "count larger than the data could hold");
        // A value length far beyond the input.
        let mut bytes = vec![FORMAT_V1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0];
        put_varint(&mut bytes, u64::MAX);
        assert_eq!(SiblingSet::decode(&bytes).unwrap_err().detail, "truncated");
    }

    #[test]
    fn varints_must_be_canonical() {
        let decode = |bytes: &[u8]| Reader::new(bytes).varint();
        assert_eq!(decode(&[0x00]), Ok(0));
        assert_eq!(decode(&[0xac, 0x02]), Ok(300));
        assert!(decode(&[0x80, 0x00]).is_err(), "redundant zero byte");
        let mut max = Vec::new();
        put_varint(&mut max, u64::MAX);
        assert_eq!(max.len(), 10);
        assert_eq!(decode(&max), Ok(u64::MAX));
        assert!(decode(&[0xff; 9].iter().copied().chain([0x02]).collect::<Vec<_>>()).is_err());
        assert!(decode(&[0xff; 11]).is_err());
    }

    #[test]
    fn sets_that_are_not_normalized_are_refused() {
        let set = sample();
        let mut versions = set.clone().into_versions();
        versions.swap(0, 1);
        let unsorted = SiblingSet::from_normalized(versions);
        assert!(SiblingSet::decode(&unsorted.to_bytes()).is_err());
        let mut versions = set.into_versions();
        versions[1].past = VersionVector::from_entries([crate::version::ClockEntry {
            actor: ActorId(7),
            counter: 1,
            timestamp_ms: 0,
        }]);
        let superseding = SiblingSet::from_normalized(versions);
        let err = SiblingSet::decode(&superseding.to_bytes()).unwrap_err();
        assert_eq!(err.detail, "a version supersedes another in the same set");
    }

    #[test]
    fn corruption_names_the_file_and_absolute_offset() {
        let err = SiblingSet::decode(&[9])
            .unwrap_err()
            .in_file("/data/000001.sst", 4096);
        assert!(
            matches!(err, Error::Corruption { offset: 4096, .. }),
            "{err:?}"
        );
    }

    proptest! {
        #[test]
        fn sets_round_trip(set in arb_set()) {
            let bytes = set.to_bytes();
            prop_assert_eq!(SiblingSet::decode(&bytes).unwrap(), set.clone());
            prop_assert_eq!(SiblingSet::decode_shared(&bytes).unwrap(), set);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = SiblingSet::decode(&bytes);
            let _ = decode_live_values(&Bytes::from(bytes), 0);
        }

        #[test]
        fn corrupted_encodings_never_panic(set in arb_set(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = set.to_bytes().to_vec();
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            if let Ok(decoded) = SiblingSet::decode(&bytes) {
                // Whatever decodes re-encodes to the same bytes (canonical).
                let again = decoded.to_bytes();
                prop_assert_eq!(again.as_ref(), bytes.as_slice());
            }
            let _ = decode_live_values(&Bytes::from(bytes), 0);
        }
    }
}
