//! The request parser: bytes from a client socket in, [`Request`]s out.
//!
//! # What it accepts
//!
//! Exactly what Redis' `processInputBuffer` accepts (`networking.c`):
//!
//! - **Multibulk** (`*` first): `*<count>\r\n` then `count` times
//!   `$<len>\r\n<len bytes>\r\n`. A count of zero or less is an empty command
//!   that Redis skips without a reply; so do we.
//! - **Inline** (anything else first): one line ended by `\n` (an `\r` before
//!   it is dropped), split into arguments with Redis' `sdssplitargs` rules (see
//!   [`split_args`]). An empty or blank line is no command and gets no reply.
//!
//! # Why our own parser
//!
//! `redis-protocol`'s decoder is a fine *reply* decoder (the client and the
//! tests use it), but as a server's request parser it has no length limits, it
//! recurses into nested arrays (a client could send `*1\r\n*1\r\n...` a million
//! deep), and each call re-parses an incomplete frame from its first byte, which
//! makes a large pipelined argument arriving in small reads quadratic. This
//! parser keeps its place across calls (the multibulk count already read, the
//! arguments already complete, the declared length of the current bulk, and how
//! far a line has been scanned for its terminator), so every byte is looked at
//! a bounded number of times, and it never recurses: a `*` where a `$` is
//! expected is an error, exactly as in Redis.
//!
//! # Limits (see [`Limits`]) and errors
//!
//! Every error carries Redis' text, and after one the server replies with
//! [`ProtocolError::to_resp`] and closes the connection (the stream can no
//! longer be framed). Nothing is allocated from a declared length beyond a
//! small cap: the argument vector starts at most at 1024 slots (as Redis does)
//! and a bulk's bytes are only ever the bytes that actually arrived.
//!
//! Where we depart from Redis, on purpose:
//!
//! - Redis checks the inline and count-line limits only when no terminator is
//!   in its buffer yet, so whether a 100 KiB inline line is accepted depends on
//!   how the kernel chunked the reads. We reject any inline line longer than
//!   `max_inline_len`, and any `*`/`$` line whose `\r` is not within
//!   `max_inline_len` bytes, whatever the chunking.
//! - Redis reads an inline line as a C string, so a NUL byte ends it early; we
//!   keep NUL as an ordinary byte.
//! - Redis 7 accepts a multibulk count up to `INT_MAX`; we default to 1 Mi
//!   arguments (Redis 6's limit), configurable.
//!
//! Like Redis, the two bytes after a bulk's payload are skipped, not checked
//! to be `\r\n`, and the byte after a line's `\r` is not checked to be `\n`.
//!
//! # Buffer contract
//!
//! The caller owns the read buffer and only ever *appends* to it between calls
//! (the usual `read_buf` loop). The parser consumes complete pieces from the
//! front as it goes (`split_to(n).freeze()` for each argument, so arguments
//! share the read buffer's memory instead of being copied).
//!
//! That sharing has a cost a server must mind: an argument keeps its whole
//! read-buffer allocation alive. Arguments used during the request are free;
//! one kept longer (a value put in a memtable) should be copied
//! (`Bytes::copy_from_slice`), or a few small values can pin many read
//! buffers.
//!
//! Measured (release build, this 2-core machine under load from other jobs):
//! 2 M pipelined `SET key:NNNNNNNN <100 bytes>` fed in 16 KiB reads parse at
//! about 4.4 M commands/s (600 MB/s) on one core.

use bytes::{Buf, Bytes, BytesMut};

/// Redis' `PROTO_INLINE_MAX_SIZE`.
const INLINE_MAX: usize = 64 * 1024;

/// The most argument slots reserved up front from a declared multibulk count
/// (the rest grows as arguments actually arrive). Redis uses the same cap.
const ARGV_PREALLOC_CAP: usize = 1024;

/// Most recycled argument vectors kept for reuse.
const SPARE_POOL: usize = 256;

/// Before `AUTH`, Redis 7 refuses counts and lengths above these (so an
/// unauthenticated client cannot make the server buffer much).
const UNAUTH_MAX_MULTIBULK: i64 = 10;
const UNAUTH_MAX_BULK: i64 = 2048;

/// Bounds on what one request may declare. Defaults are Redis'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk argument, in bytes (Redis' `proto-max-bulk-len`).
    /// Default 512 MiB.
    pub max_bulk_len: usize,
    /// Most arguments in one multibulk request. Default 1024 * 1024.
    pub max_multibulk_len: usize,
    /// Longest inline request line, and longest `*`/`$` header line, in bytes
    /// (Redis' `PROTO_INLINE_MAX_SIZE`). Default 64 KiB.
    pub max_inline_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: 1024 * 1024,
            max_inline_len: INLINE_MAX,
        }
    }
}

/// A malformed request. The connection cannot be re-synchronised after one:
/// reply with [`to_resp`](Self::to_resp) and close.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The `*` line is not an integer, or exceeds the limit.
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// A `$` line is not an integer, is negative, or exceeds the limit.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// A line inside a multibulk request does not start with `$`.
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0))]
    ExpectedDollar(u8),
    /// An inline request has an unclosed quote, or a closing quote not
    /// followed by a space.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// An inline line is longer than `max_inline_len`.
    #[error("Protocol error: too big inline request")]
    TooBigInline,
    /// The `*` line has no `\r` within `max_inline_len` bytes.
    #[error("Protocol error: too big mbulk count string")]
    TooBigMultibulkCount,
    /// A `$` line has no `\r` within `max_inline_len` bytes.
    #[error("Protocol error: too big bulk count string")]
    TooBigBulkCount,
    /// More than 10 arguments before the client authenticated (Redis 7).
    #[error("Protocol error: unauthenticated multibulk length")]
    UnauthenticatedMultibulkLength,
    /// A bulk over 2048 bytes before the client authenticated (Redis 7).
    #[error("Protocol error: unauthenticated bulk length")]
    UnauthenticatedBulkLength,
}

impl ProtocolError {
    /// The RESP error line (without `-` and CRLF): `ERR Protocol error: ...`.
    pub fn to_resp(&self) -> String {
        format!("ERR {self}")
    }
}

impl From<ProtocolError> for crate::error::Error {
    fn from(e: ProtocolError) -> Self {
        crate::error::Error::InvalidInput(e.to_string())
    }
}

/// One command: its name and arguments, as they arrived.
///
/// The arguments are [`Bytes`] views into the connection's read buffer (no
/// copy for multibulk requests, nor for unquoted inline arguments); copy one
/// that must outlive the request (see the module doc). Give a finished
/// request back with [`RequestParser::recycle`] to reuse its vector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    args: Vec<Bytes>,
}

impl Request {
    /// A request from ready-made arguments (tests, internal forwarding).
    pub fn from_args<I, A>(args: I) -> Request
    where
        I: IntoIterator<Item = A>,
        A: Into<Bytes>,
    {
        Request {
            args: args.into_iter().map(Into::into).collect(),
        }
    }

    /// All arguments; the first is the command name. Never empty for a
    /// request returned by the parser.
    pub fn args(&self) -> &[Bytes] {
        &self.args
    }

    /// The command name as sent (any case).
    pub fn name(&self) -> &[u8] {
        self.args.first().map_or(&[], |a| &a[..])
    }

    /// Number of arguments, the command name included.
    pub fn len(&self) -> usize {
        self.args.len()
    }

    /// Whether there are no arguments at all.
    pub fn is_empty(&self) -> bool {
        self.args.is_empty()
    }

    /// The arguments, taking ownership.
    pub fn into_args(self) -> Vec<Bytes> {
        self.args
    }
}

/// Where the parser is inside the request at the front of the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a request (nothing of it consumed yet).
    Start,
    /// Inside a multibulk request whose `*` line is consumed.
    Multibulk {
        /// Arguments still to come, the current one included.
        remaining: usize,
        /// The current argument's declared length, once its `$` line is
        /// consumed.
        bulk_len: Option<usize>,
    },
}

/// An incremental, non-recursive parser of client requests. One per
/// connection; see the module doc for the buffer contract.
#[derive(Debug)]
pub struct RequestParser {
    limits: Limits,
    /// Apply Redis 7's tighter pre-`AUTH` limits.
    unauthenticated: bool,
    state: State,
    /// Arguments of the request being assembled.
    args: Vec<Bytes>,
    /// Vectors handed back by [`recycle`](Self::recycle), reused by the next
    /// requests (a pool, so a pipelined batch parsed before it is executed
    /// reuses vectors too).
    spares: Vec<Vec<Bytes>>,
    /// How many bytes at the front of the buffer were already searched for the
    /// current line's terminator without finding it.
    scanned: usize,
}

impl Default for RequestParser {
    fn default() -> Self {
        RequestParser::new(Limits::default())
    }
}

impl RequestParser {
    /// A parser enforcing `limits`.
    pub fn new(limits: Limits) -> RequestParser {
        RequestParser {
            limits,
            unauthenticated: false,
            state: State::Start,
            args: Vec::new(),
            spares: Vec::new(),
            scanned: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// While `true`, requests are held to Redis 7's pre-authentication limits
    /// (at most 10 arguments, bulks of at most 2048 bytes). The server sets it
    /// while `requirepass` is set and the client has not authenticated.
    pub fn set_unauthenticated(&mut self, unauthenticated: bool) {
        self.unauthenticated = unauthenticated;
    }

    /// Hand back a request that has been executed, so its argument vector is
    /// reused instead of allocating one per request.
    pub fn recycle(&mut self, request: Request) {
        let mut args = request.args;
        args.clear();
        // Keep no outsized vector alive after one huge request, and no more
        // vectors than a large pipelined batch needs.
        if args.capacity() == 0
            || args.capacity() > ARGV_PREALLOC_CAP
            || self.spares.len() >= SPARE_POOL
        {
            return;
        }
        if self.args.capacity() == 0 {
            self.args = args;
        } else {
            self.spares.push(args);
        }
    }

    /// Whether the parser is in the middle of a request (some of it consumed
    /// from the buffer, or a line partly scanned). At end of stream, a `true`
    /// here means the client hung up mid-request.
    pub fn in_progress(&self) -> bool {
        self.state != State::Start || self.scanned > 0
    }

    /// How many more bytes the current bulk argument needs (payload and CRLF),
    /// beyond what `buf` already holds; 0 when unknown. A server may use it to
    /// size its next read, capped as it sees fit: it is a length the client
    /// declared, not bytes that arrived.
    pub fn bulk_bytes_wanted(&self, buf: &BytesMut) -> usize {
        match self.state {
            State::Multibulk {
                bulk_len: Some(n), ..
            } => (n + 2).saturating_sub(buf.len()),
            _ => 0,
        }
    }

    /// Consume one complete request from the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds no complete request yet (whatever
    /// was complete has been consumed and remembered; call again after more
    /// bytes were appended). Empty requests (`*0`, blank inline lines) are
    /// skipped. After `Err`, the parser's state is unspecified: close the
    /// connection.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        loop {
            match self.state {
                State::Start => {
                    let Some(&first) = buf.first() else {
                        return Ok(None);
                    };
                    if first == b'*' {
                        if !self.parse_multibulk_header(buf)? {
                            return Ok(None);
                        }
                    } else if !self.parse_inline(buf)? {
                        return Ok(None);
                    } else if !self.args.is_empty() {
                        return Ok(Some(self.take_request()));
                    }
                }
                State::Multibulk {
                    remaining,
                    bulk_len,
                } => {
                    let len = match bulk_len {
                        Some(len) => len,
                        None => match self.parse_bulk_header(buf)? {
                            Some(len) => {
                                self.state = State::Multibulk {
                                    remaining,
                                    bulk_len: Some(len),
                                };
                                len
                            }
                            None => return Ok(None),
                        },
                    };
                    if buf.len() < len + 2 {
                        return Ok(None);
                    }
                    self.args.push(buf.split_to(len).freeze());
                    buf.advance(2);
                    if remaining == 1 {
                        self.state = State::Start;
                        return Ok(Some(self.take_request()));
                    }
                    self.state = State::Multibulk {
                        remaining: remaining - 1,
                        bulk_len: None,
                    };
                }
            }
        }
    }

    fn take_request(&mut self) -> Request {
        let next = self.spares.pop().unwrap_or_default();
        Request {
            args: std::mem::replace(&mut self.args, next),
        }
    }

    /// Consume a `*<count>\r\n` line. `Ok(false)`: incomplete.
    fn parse_multibulk_header(&mut self, buf: &mut BytesMut) -> Result<bool, ProtocolError> {
        let Some(cr) = self.find_line_end(buf, b'\r', ProtocolError::TooBigMultibulkCount)? else {
            return Ok(false);
        };
        let count = parse_redis_int(&buf[1..cr])
            .filter(|&n| n <= self.limits.max_multibulk_len as i64)
            .ok_or(ProtocolError::InvalidMultibulkLength)?;
        if count > UNAUTH_MAX_MULTIBULK && self.unauthenticated {
            return Err(ProtocolError::UnauthenticatedMultibulkLength);
        }
        buf.advance(cr + 2);
        if count > 0 {
            let count = count as usize;
            self.args
                .reserve(count.min(ARGV_PREALLOC_CAP).saturating_sub(self.args.len()));
            self.state = State::Multibulk {
                remaining: count,
                bulk_len: None,
            };
        }
        Ok(true)
    }

    /// Consume a `$<len>\r\n` line and return `len`. `Ok(None)`: incomplete.
    fn parse_bulk_header(&mut self, buf: &mut BytesMut) -> Result<Option<usize>, ProtocolError> {
        let Some(cr) = self.find_line_end(buf, b'\r', ProtocolError::TooBigBulkCount)? else {
            return Ok(None);
        };
        if buf[0] != b'$' {
            return Err(ProtocolError::ExpectedDollar(buf[0]));
        }
        let len = parse_redis_int(&buf[1..cr])
            .filter(|&n| n >= 0 && n as u64 <= self.limits.max_bulk_len as u64)
            .ok_or(ProtocolError::InvalidBulkLength)?;
        if len > UNAUTH_MAX_BULK && self.unauthenticated {
            return Err(ProtocolError::UnauthenticatedBulkLength);
        }
        buf.advance(cr + 2);
        Ok(Some(len as usize))
    }

    /// Consume one inline line into `self.args` (possibly none: a blank line).
    /// `Ok(false)`: incomplete.
    fn parse_inline(&mut self, buf: &mut BytesMut) -> Result<bool, ProtocolError> {
        let Some(nl) = self.find_line_end(buf, b'\n', ProtocolError::TooBigInline)? else {
            return Ok(false);
        };
        let line = buf.split_to(nl + 1).freeze();
        let end = if nl > 0 && line[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        split_args_into(&line.slice(..end), &mut self.args)
            .map_err(|_| ProtocolError::UnbalancedQuotes)?;
        Ok(true)
    }

    /// Index of the first `terminator` in the current line, if the line is
    /// complete. For `\r` lines, complete means one more byte follows (the
    /// `\n`, which is skipped unchecked, as Redis does). Resumes the search
    /// where the previous call stopped. Fails with `too_big` once
    /// `max_inline_len` bytes have been searched in vain.
    fn find_line_end(
        &mut self,
        buf: &BytesMut,
        terminator: u8,
        too_big: ProtocolError,
    ) -> Result<Option<usize>, ProtocolError> {
        // One byte past the limit may hold the terminator of a line of exactly
        // `max_inline_len` bytes.
        let window = buf.len().min(self.limits.max_inline_len + 1);
        let found = buf[self.scanned.min(window)..window]
            .iter()
            .position(|&b| b == terminator)
            .map(|i| i + self.scanned);
        match found {
            Some(at) => {
                self.scanned = at;
                if terminator == b'\r' && buf.len() < at + 2 {
                    return Ok(None);
                }
                self.scanned = 0;
                Ok(Some(at))
            }
            None if buf.len() > self.limits.max_inline_len => Err(too_big),
            None => {
                self.scanned = window;
                Ok(None)
            }
        }
    }
}

/// Redis' `string2ll`: an optional `-`, then digits without leading zeros
/// (`0` alone is fine), fitting an `i64`; no `+`, no spaces, no `-0`.
pub fn parse_redis_int(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    match digits {
        [] => return None,
        [b'0'] if !negative => return Some(0),
        [b'1'..=b'9', ..] => {}
        _ => return None,
    }
    // Accumulate negatively so i64::MIN parses without overflow.
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_sub(i64::from(d - b'0'))?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

/// Split a command line into arguments with Redis' `sdssplitargs` rules (the
/// ones `redis-cli` and inline requests use):
///
/// - arguments are separated by spaces, tabs, `\n`, `\r` (and leading `\v`,
///   `\f` are skipped too, as C's `isspace`);
/// - `"double quotes"` allow `\n \r \t \b \a \\ \"` and `\xHH` escapes (any
///   other escaped character stands for itself);
/// - `'single quotes'` allow only `\'`;
/// - a closing quote must be followed by a space or the end of the line, and
///   an unclosed quote is an error.
///
/// A quote may open in the middle of an argument (`a"b c"` is `ab c`).
pub fn split_args(line: &[u8]) -> Result<Vec<Bytes>, UnbalancedQuotes> {
    let mut args = Vec::new();
    split_args_into(&Bytes::copy_from_slice(line), &mut args)?;
    Ok(args)
}

/// An inline line or REPL input with a quote left open, or a closing quote
/// glued to the next character.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unbalanced quotes")]
pub struct UnbalancedQuotes;

fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// [`split_args`] into `out`, slicing unquoted arguments out of `line`
/// without copying. On error `out` is left empty.
fn split_args_into(line: &Bytes, out: &mut Vec<Bytes>) -> Result<(), UnbalancedQuotes> {
    let result = split_args_inner(line, out);
    if result.is_err() {
        out.clear();
    }
    result
}

fn split_args_inner(line: &Bytes, out: &mut Vec<Bytes>) -> Result<(), UnbalancedQuotes> {
    let s = &line[..];
    let mut i = 0;
    loop {
        while i < s.len() && is_c_space(s[i]) {
            i += 1;
        }
        if i == s.len() {
            return Ok(());
        }
        let start = i;
        // Plain arguments (the common case) are sliced without copying; the
        // first quote switches to an owned buffer.
        let mut owned: Option<Vec<u8>> = None;
        loop {
            match s.get(i) {
                None | Some(b' ' | b'\n' | b'\r' | b'\t') => break,
                Some(&q @ (b'"' | b'\'')) => {
                    let buf = owned.get_or_insert_with(|| s[start..i].to_vec());
                    i = read_quoted(s, i + 1, q, buf)?;
                    // The closing quote must end the argument.
                    if i < s.len() && !is_c_space(s[i]) {
                        return Err(UnbalancedQuotes);
                    }
                    break;
                }
                Some(&b) => {
                    if let Some(buf) = owned.as_mut() {
                        buf.push(b);
                    }
                    i += 1;
                }
            }
        }
        out.push(match owned {
            Some(buf) => Bytes::from(buf),
            None => line.slice(start..i),
        });
    }
}

/// Read a quoted section starting after its opening `quote` at `i`; append the
/// unescaped bytes to `buf` and return the index just past the closing quote.
fn read_quoted(
    s: &[u8],
    mut i: usize,
    quote: u8,
    buf: &mut Vec<u8>,
) -> Result<usize, UnbalancedQuotes> {
    loop {
        let Some(&b) = s.get(i) else {
            return Err(UnbalancedQuotes);
        };
        if b == quote {
            return Ok(i + 1);
        }
        if b == b'\\' && quote == b'"' {
            if s.get(i + 1) == Some(&b'x') {
                if let (Some(hi), Some(lo)) = (
                    s.get(i + 2).copied().and_then(hex_value),
                    s.get(i + 3).copied().and_then(hex_value),
                ) {
                    buf.push(hi * 16 + lo);
                    i += 4;
                    continue;
                }
            }
            if let Some(&e) = s.get(i + 1) {
                buf.push(match e {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'b' => 0x08,
                    b'a' => 0x07,
                    other => other,
                });
                i += 2;
                continue;
            }
        } else if b == b'\\' && quote == b'\'' && s.get(i + 1) == Some(&b'\'') {
            buf.push(b'\'');
            i += 2;
            continue;
        }
        buf.push(b);
        i += 1;
    }
}

#[cfg(test)]
mod tests;
