//! Causal-context tokens: the opaque strings `VCLOCK` hands to clients and
//! `RESOLVE` takes back.
//!
//! A token must survive being copied by hand between `redis-cli` sessions, so
//! it is printable ASCII with no spaces or quotes, and it carries a checksum
//! so that a truncated or mistyped token is refused instead of silently
//! standing for a smaller context (which would make `RESOLVE` keep siblings
//! the user meant to replace, or worse, a larger one that drops versions the
//! user never saw).
//!
//! # Token format 1
//!
//! ```text
//! token = "c1" base64url(body || crc32c(body) as 4 bytes little-endian)
//! body  = varint entry_count
//!         entry_count times, in strictly increasing actor order:
//!           8 bytes  actor (big-endian u64)
//!           varint   counter   (>= 1)
//!           varint   timestamp_ms
//! ```
//!
//! `base64url` is RFC 4648 §5 without padding (`A-Z a-z 0-9 - _`); the
//! decoder accepts only the canonical form (unused trailing bits zero).
//! Varints are as in the storage format ([`super::codec`]). The leading `c1`
//! names the format so that a later one can be told apart. The empty context
//! is a valid token: `c1AFFTfVI` (a body of one zero byte, then its CRC).
//! For example `{0000000000003f2a:4}` with timestamp 40 is
//! `c1AQAAAAAAAD8qBCiyHzGe`.
//!
//! A token names no key: it is meant for the key it was read from, and a
//! token from another key is caught only when it claims more than this key
//! reached. A token is not authenticated either: a client can forge one. That is harmless as
//! long as the server checks it against the key
//! ([`SiblingSet::validate_context`](super::SiblingSet::validate_context)): a
//! forged token can then at most supersede versions that exist, exactly as a
//! `SET` can.

use bytes::Bytes;

use super::clock::VersionVector;
use super::codec::{put_clock, Reader};
use crate::error::{Error, Result};

/// The prefix of every token this build writes.
pub const TOKEN_PREFIX: &[u8; 2] = b"c1";

/// The longest token accepted: far above any pruned clock (about 30
/// characters per entry), small enough that a hostile one costs nothing.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

const CHECKSUM_LEN: usize = 4;

/// Encodes a context as a printable token.
pub fn encode_token(context: &VersionVector) -> Bytes {
    let mut body = Vec::with_capacity(1 + context.len() * 18 + CHECKSUM_LEN);
    put_clock(&mut body, context);
    let checksum = crc32c::crc32c(&body);
    body.extend_from_slice(&checksum.to_le_bytes());
    let mut token = Vec::with_capacity(TOKEN_PREFIX.len() + body.len().div_ceil(3) * 4);
    token.extend_from_slice(TOKEN_PREFIX);
    base64url_encode(&body, &mut token);
    Bytes::from(token)
}

/// Decodes a token made by [`encode_token`]. Anything else (garbled,
/// truncated, checksum mismatch, unknown format) is
/// `Error::InvalidInput("invalid context: ...")`.
pub fn decode_token(token: &[u8]) -> Result<VersionVector> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(invalid("too long to be a context token"));
    }
    let Some(encoded) = token.strip_prefix(TOKEN_PREFIX.as_slice()) else {
        if token.len() >= 2 && token[0] == b'c' && token[1].is_ascii_digit() {
            return Err(invalid("token format from a newer version of ringkv"));
        }
        return Err(invalid(
            "not a context token (copy the whole string VCLOCK returned)",
        ));
    };
    let raw = base64url_decode(encoded).ok_or_else(|| {
        invalid("not a context token (bad character or length; was it copied in full?)")
    })?;
    if raw.len() < 1 + CHECKSUM_LEN {
        return Err(invalid("token is truncated"));
    }
    let (body, checksum) = raw.split_at(raw.len() - CHECKSUM_LEN);
    let mut expected = [0u8; CHECKSUM_LEN];
    expected.copy_from_slice(checksum);
    if crc32c::crc32c(body) != u32::from_le_bytes(expected) {
        return Err(invalid("checksum mismatch (was the token copied in full?)"));
    }
    let mut reader = Reader::new(body);
    let context = reader
        .clock()
        .map_err(|e| invalid(format!("malformed token: {}", e.detail)))?;
    reader
        .finish()
        .map_err(|e| invalid(format!("malformed token: {}", e.detail)))?;
    Ok(context)
}

/// The human-readable form of a context: `actor:counter` pairs by actor,
/// e.g. `3f2a00c1d4e5f607:4, 91bc0a7755e2d013:1`; `(empty)` for the empty
/// context.
pub fn fmt_human(context: &VersionVector) -> String {
    if context.is_empty() {
        return "(empty)".to_string();
    }
    let mut out = String::with_capacity(context.len() * 22);
    for (i, entry) in context.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&format!("{}:{}", entry.actor, entry.counter));
    }
    out
}

fn invalid(what: impl std::fmt::Display) -> Error {
    Error::invalid(format!("invalid context: {what}"))
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// RFC 4648 §5 base64url without padding.
fn base64url_encode(input: &[u8], out: &mut Vec<u8>) {
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]);
        }
    }
}

fn base64url_value(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Decodes canonical unpadded base64url; `None` on any other input.
fn base64url_decode(input: &[u8]) -> Option<Vec<u8>> {
    if input.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 2);
    for chunk in input.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= base64url_value(c)? << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let produced = chunk.len() - 1;
        // Bits below the last produced byte must be zero in canonical form.
        let unused_mask = match produced {
            1 => 0xffff,
            2 => 0xff,
            _ => 0,
        };
        if n & unused_mask != 0 {
            return None;
        }
        out.extend_from_slice(&bytes[..produced]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::clock::tests::{arb_clock, vv};
    use crate::version::ActorId;
    use proptest::prelude::*;

    #[test]
    fn the_empty_context_is_a_valid_token() {
        let token = encode_token(&VersionVector::new());
        assert_eq!(token.as_ref(), b"c1AFFTfVI");
        assert_eq!(decode_token(&token).unwrap(), VersionVector::new());
    }

    #[test]
    fn tokens_are_printable_without_quoting() {
        let clock = vv(&[(u64::MAX, 1), (0x3f2a, 4), (1, 1_000_000)]);
        let token = encode_token(&clock);
        assert!(token
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert!(token.starts_with(b"c1"));
        assert_eq!(decode_token(&token).unwrap(), clock);
    }

    #[test]
    fn garbled_tokens_get_clear_errors() {
        let token = encode_token(&vv(&[(0x3f2a, 4), (0x91bc, 1)]));
        let message = |input: &[u8]| decode_token(input).unwrap_err().to_resp();
        assert_eq!(
            message(b"hello"),
            "ERR invalid context: not a context token (copy the whole string VCLOCK returned)"
        );
        assert_eq!(
            message(b"c7abc"),
            "ERR invalid context: token format from a newer version of ringkv"
        );
        assert!(message(b"c1ab!d").contains("bad character"));
        let mut flipped = token.to_vec();
        let last = flipped.len() - 3;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            message(&flipped),
            "ERR invalid context: checksum mismatch (was the token copied in full?)"
        );
        for len in 0..token.len() {
            assert!(decode_token(&token[..len]).is_err(), "prefix of {len}");
        }
        assert!(message(&vec![b'A'; MAX_TOKEN_LEN + 1]).contains("too long"));
    }

    #[test]
    fn a_checksummed_token_claiming_a_huge_clock_is_refused() {
        // Right checksum, but the body claims 2^40 entries in 9 bytes.
        let mut body = Vec::new();
        crate::version::codec::put_varint(&mut body, 1 << 40);
        body.extend_from_slice(&[0; 3]);
        let checksum = crc32c::crc32c(&body);
        body.extend_from_slice(&checksum.to_le_bytes());
        let mut token = b"c1".to_vec();
        base64url_encode(&body, &mut token);
        let err = decode_token(&token).unwrap_err().to_resp();
        assert_eq!(
            err,
            "ERR invalid context: malformed token: count larger than the data could hold"
        );
    }

    #[test]
    fn human_form_lists_actor_counter_pairs() {
        let clock = vv(&[(0x91bc, 1), (0x3f2a, 4)]);
        assert_eq!(fmt_human(&clock), "0000000000003f2a:4, 00000000000091bc:1");
        assert_eq!(fmt_human(&VersionVector::new()), "(empty)");
        // The example in the module doc.
        assert_eq!(
            encode_token(&vv(&[(0x3f2a, 4)])).as_ref(),
            b"c1AQAAAAAAAD8qBCiyHzGe"
        );
        assert_eq!(ActorId(0x3f2a).to_string().len(), 16);
    }

    #[test]
    fn base64url_matches_rfc_4648_vectors() {
        for (raw, encoded) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            let mut out = Vec::new();
            base64url_encode(raw.as_bytes(), &mut out);
            assert_eq!(out, encoded.as_bytes());
            assert_eq!(
                base64url_decode(encoded.as_bytes()).unwrap(),
                raw.as_bytes()
            );
        }
        assert_eq!(base64url_decode(b"Zh"), None, "non-zero unused bits");
        assert_eq!(base64url_decode(b"Z"), None);
    }

    proptest! {
        #[test]
        fn tokens_round_trip(clock in arb_clock()) {
            prop_assert_eq!(decode_token(&encode_token(&clock)).unwrap(), clock);
        }

        #[test]
        fn decoding_arbitrary_input_never_panics(input in prop::collection::vec(any::<u8>(), 0..100)) {
            let _ = decode_token(&input);
            let mut prefixed = b"c1".to_vec();
            prefixed.extend_from_slice(&input);
            let _ = decode_token(&prefixed);
        }

        #[test]
        fn a_changed_character_is_detected(clock in arb_clock(), at in any::<prop::sample::Index>(), c in b'0'..=b'z') {
            let token = encode_token(&clock);
            let mut changed = token.to_vec();
            let i = at.index(changed.len());
            prop_assume!(changed[i] != c);
            changed[i] = c;
            prop_assert!(decode_token(&changed).is_err());
        }
    }
}
