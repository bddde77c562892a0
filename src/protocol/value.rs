//! [`Value`]: a reply as a client reads it, and [`ValueDecoder`], the
//! incremental decoder that reads it (RESP2 and RESP3 in one).
//!
//! # Why our own decoder (and not `redis-protocol`'s)
//!
//! `redis-protocol` 6 decodes RESP3 maps into a hash map and sets into a hash
//! set. That loses the server's order (a `HELLO 3` or `CONFIG GET` reply comes
//! out shuffled, so a REPL could not print it as `redis-cli` does) and cannot
//! hold a set whose members are arrays: Redis 7's own `COMMAND DOCS SET` reply
//! (its `history` field) fails to decode with "Invalid hash key". Its decoder
//! also re-parses an incomplete reply from the first byte on every read, which
//! is quadratic for a large reply arriving in many reads.
//!
//! This decoder keeps order and duplicates (maps are `Vec`s of pairs), keeps
//! its place across reads (completed elements are consumed from the buffer and
//! parked on an explicit stack of open aggregates, so nothing is re-scanned),
//! and never recurses, so a hostile server's `*1\r\n*1\r\n...` cannot overflow
//! the stack. `redis-protocol` remains the independent reference: the tests
//! check that both decoders agree on every RESP2 reply and on RESP3 replies
//! its types can hold.
//!
//! Accepted: every RESP2 type (`$-1` and `*-1` are [`Value::Nil`]) and every
//! RESP3 type (`_ , # ( = % ~ > !`); attributes (`|`) are read and dropped,
//! as they describe the reply that follows. Streamed RESP3 aggregates and
//! strings (`$?`, `*?`) are refused: Redis never sends them.

use bytes::{Buf, Bytes, BytesMut};

use super::parse_redis_int;

/// A reply as a client sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `$-1`, `*-1` or RESP3 `_`.
    Nil,
    /// A simple string (`+OK`).
    Status(String),
    /// An error reply (`-ERR ...` or RESP3 `!`), without the `-`.
    Error(String),
    /// `:n`
    Integer(i64),
    /// A bulk string.
    Bulk(Bytes),
    /// `*n`
    Array(Vec<Value>),
    /// RESP3 `%n`, in the server's order.
    Map(Vec<(Value, Value)>),
    /// RESP3 `~n`, in the server's order.
    Set(Vec<Value>),
    /// RESP3 `,`.
    Double(f64),
    /// RESP3 `#t`/`#f`.
    Boolean(bool),
    /// RESP3 `(`, kept as its decimal text.
    BigNumber(String),
    /// RESP3 `=`: a three-letter format (`txt`, `mkd`) and the text.
    Verbatim { format: String, text: Bytes },
    /// RESP3 `>`: an out-of-band message.
    Push(Vec<Value>),
}

impl Value {
    /// The bytes of a bulk, status or verbatim string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(b) => Some(b),
            Value::Status(s) => Some(s.as_bytes()),
            Value::Verbatim { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The text of a string reply, if it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The elements of an array, set or push reply.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) | Value::Set(v) | Value::Push(v) => Some(v),
            _ => None,
        }
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_))
    }

    /// Key-value pairs of a map reply, or of a RESP2 flat array of pairs (how
    /// a RESP2 server sends a map).
    pub fn to_pairs(&self) -> Option<Vec<(&Value, &Value)>> {
        match self {
            Value::Map(pairs) => Some(pairs.iter().map(|(k, v)| (k, v)).collect()),
            Value::Array(items) if items.len() % 2 == 0 => {
                Some(items.chunks_exact(2).map(|kv| (&kv[0], &kv[1])).collect())
            }
            _ => None,
        }
    }
}

/// A reply the decoder cannot read; the connection is unusable after it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed reply: {0}")]
pub struct MalformedReply(pub String);

/// Bounds on what a server may declare, so that a broken or hostile server
/// cannot make the client allocate without bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueLimits {
    /// Largest bulk string. Default 512 MiB, Redis' `proto-max-bulk-len`.
    pub max_bulk_len: usize,
    /// Most elements in one aggregate (pairs for a map). Default 2^31.
    pub max_aggregate_len: usize,
    /// Deepest nesting. Default 512.
    pub max_depth: usize,
    /// Longest header or simple line. Default 64 KiB.
    pub max_line_len: usize,
}

impl Default for ValueLimits {
    fn default() -> Self {
        ValueLimits {
            max_bulk_len: 512 * 1024 * 1024,
            max_aggregate_len: 1 << 31,
            max_depth: 512,
            max_line_len: 64 * 1024,
        }
    }
}

/// The most element slots reserved from a declared aggregate length.
const PREALLOC_CAP: usize = 1024;

/// An aggregate whose elements are still arriving.
#[derive(Debug)]
struct Open {
    kind: u8,
    /// Elements still expected (for a map: keys plus values).
    remaining: usize,
    items: Vec<Value>,
    /// An attribute map is read and then dropped.
    is_attribute: bool,
}

/// What the decoder is waiting for at the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// A type byte and its line.
    Header,
    /// The payload of a bulk (`$`), blob error (`!`) or verbatim (`=`)
    /// string of this length.
    Blob { kind: u8, len: usize },
}

/// Incremental decoder of replies; one per connection. Like
/// [`RequestParser`](super::RequestParser), the caller only appends to the
/// buffer between calls.
#[derive(Debug)]
pub struct ValueDecoder {
    limits: ValueLimits,
    stack: Vec<Open>,
    pending: Pending,
    /// Bytes at the front already searched for `\r` in vain.
    scanned: usize,
}

impl Default for ValueDecoder {
    fn default() -> Self {
        ValueDecoder::new(ValueLimits::default())
    }
}

impl ValueDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: ValueLimits) -> ValueDecoder {
        ValueDecoder {
            limits,
            stack: Vec::new(),
            pending: Pending::Header,
            scanned: 0,
        }
    }

    /// Consume one complete reply from the front of `buf`, or remember how
    /// far it got and return `Ok(None)`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Value>, MalformedReply> {
        loop {
            let Some(value) = self.next_element(buf)? else {
                return Ok(None);
            };
            // Attach the element to the innermost open aggregate, closing
            // every aggregate it completes.
            let mut value = value;
            loop {
                let Some(top) = self.stack.last_mut() else {
                    return Ok(Some(value));
                };
                top.items.push(value);
                top.remaining -= 1;
                if top.remaining > 0 {
                    break;
                }
                let Some(done) = self.stack.pop() else {
                    break;
                };
                if done.is_attribute {
                    // The attribute describes the next element; read that
                    // element in its place.
                    break;
                }
                value = close(done);
            }
        }
    }

    /// Read headers until one yields a complete element: a scalar or an
    /// empty aggregate (a non-empty aggregate is pushed on the stack and its
    /// elements are read next). `Ok(None)`: more bytes are needed.
    fn next_element(&mut self, buf: &mut BytesMut) -> Result<Option<Value>, MalformedReply> {
        loop {
            if let Pending::Blob { kind, len } = self.pending {
                if buf.len() < len + 2 {
                    return Ok(None);
                }
                let data = buf.split_to(len).freeze();
                if &buf[..2] != b"\r\n" {
                    return Err(MalformedReply("string not followed by CRLF".into()));
                }
                buf.advance(2);
                self.pending = Pending::Header;
                return blob(kind, data).map(Some);
            }
            let Some(cr) = self.find_cr(buf)? else {
                return Ok(None);
            };
            if cr == 0 {
                return Err(MalformedReply(
                    "empty line where a type byte belongs".into(),
                ));
            }
            let kind = buf[0];
            let line = buf.split_to(cr + 2);
            let text = &line[1..cr];
            if line[cr + 1] != b'\n' {
                return Err(MalformedReply("line not ended by CRLF".into()));
            }
            match kind {
                b'+' => return Ok(Some(Value::Status(lossy(text)))),
                b'-' => return Ok(Some(Value::Error(lossy(text)))),
                b':' => return int(text).map(|n| Some(Value::Integer(n))),
                b'_' if text.is_empty() => return Ok(Some(Value::Nil)),
                b'#' if text == b"t" => return Ok(Some(Value::Boolean(true))),
                b'#' if text == b"f" => return Ok(Some(Value::Boolean(false))),
                b',' => return double(text).map(|d| Some(Value::Double(d))),
                b'(' if !text.is_empty()
                    && text.iter().all(|&b| b.is_ascii_digit() || b == b'-') =>
                {
                    return Ok(Some(Value::BigNumber(lossy(text))))
                }
                b'$' | b'!' | b'=' => {
                    let len = int(text)?;
                    if len == -1 && kind == b'$' {
                        return Ok(Some(Value::Nil));
                    }
                    let len = usize::try_from(len)
                        .ok()
                        .filter(|&l| l <= self.limits.max_bulk_len)
                        .ok_or_else(|| MalformedReply(format!("bad string length {len}")))?;
                    self.pending = Pending::Blob { kind, len };
                }
                b'*' | b'%' | b'~' | b'>' | b'|' => {
                    let len = int(text)?;
                    if len == -1 && kind == b'*' {
                        return Ok(Some(Value::Nil));
                    }
                    let len = usize::try_from(len)
                        .ok()
                        .filter(|&l| l <= self.limits.max_aggregate_len)
                        .ok_or_else(|| MalformedReply(format!("bad aggregate length {len}")))?;
                    let elements = if matches!(kind, b'%' | b'|') {
                        len * 2
                    } else {
                        len
                    };
                    let open = Open {
                        kind,
                        remaining: elements,
                        items: Vec::with_capacity(elements.min(PREALLOC_CAP)),
                        is_attribute: kind == b'|',
                    };
                    if elements == 0 {
                        if open.is_attribute {
                            continue;
                        }
                        return Ok(Some(close(open)));
                    }
                    if self.stack.len() >= self.limits.max_depth {
                        return Err(MalformedReply("nested too deep".into()));
                    }
                    self.stack.push(open);
                }
                other => {
                    return Err(MalformedReply(format!(
                        "unexpected type byte {:?}",
                        char::from(other)
                    )))
                }
            }
        }
    }

    /// Index of the `\r` ending the line at the front, once its `\n` is in
    /// the buffer too.
    fn find_cr(&mut self, buf: &BytesMut) -> Result<Option<usize>, MalformedReply> {
        let window = buf.len().min(self.limits.max_line_len + 1);
        match buf[self.scanned.min(window)..window]
            .iter()
            .position(|&b| b == b'\r')
        {
            Some(i) => {
                let at = self.scanned + i;
                if buf.len() < at + 2 {
                    self.scanned = at;
                    return Ok(None);
                }
                self.scanned = 0;
                Ok(Some(at))
            }
            None if buf.len() > self.limits.max_line_len => {
                Err(MalformedReply("line too long".into()))
            }
            None => {
                self.scanned = window;
                Ok(None)
            }
        }
    }
}

fn close(open: Open) -> Value {
    match open.kind {
        b'%' => {
            let mut pairs = Vec::with_capacity(open.items.len() / 2);
            let mut items = open.items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                pairs.push((k, v));
            }
            Value::Map(pairs)
        }
        b'~' => Value::Set(open.items),
        b'>' => Value::Push(open.items),
        _ => Value::Array(open.items),
    }
}

fn blob(kind: u8, data: Bytes) -> Result<Value, MalformedReply> {
    match kind {
        b'$' => Ok(Value::Bulk(data)),
        b'!' => Ok(Value::Error(lossy(&data))),
        _ => {
            if data.len() < 4 || data[3] != b':' {
                return Err(MalformedReply("verbatim string without a format".into()));
            }
            Ok(Value::Verbatim {
                format: lossy(&data[..3]),
                text: data.slice(4..),
            })
        }
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn int(text: &[u8]) -> Result<i64, MalformedReply> {
    parse_redis_int(text)
        .or_else(|| std::str::from_utf8(text).ok()?.parse().ok())
        .ok_or_else(|| MalformedReply(format!("bad integer {:?}", lossy(text))))
}

fn double(text: &[u8]) -> Result<f64, MalformedReply> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .ok_or_else(|| MalformedReply(format!("bad double {:?}", lossy(text))))
}

#[cfg(test)]
mod tests;
