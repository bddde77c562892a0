//! TEMPORARY stand-in for the `protocol` branch (RequestParser, encode) so the
//! server can be built and tested before it lands. Deleted at the merge.

use bytes::{Buf, Bytes, BytesMut};

use crate::protocol::Reply;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolVersion {
    Resp2,
    Resp3,
}

#[derive(Debug)]
pub struct ProtocolError(pub String);

impl ProtocolError {
    pub fn to_resp(&self) -> String {
        format!("ERR Protocol error: {}", self.0)
    }
}

pub type Request = Vec<Bytes>;

#[derive(Debug)]
pub struct RequestParser {
    max_bulk_len: u64,
}

impl RequestParser {
    pub fn new(max_bulk_len: u64) -> Self {
        RequestParser { max_bulk_len }
    }

    pub fn set_max_bulk_len(&mut self, n: u64) {
        self.max_bulk_len = n;
    }

    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        loop {
            if buf.is_empty() {
                return Ok(None);
            }
            if buf[0] != b'*' {
                let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                    return Ok(None);
                };
                let line = buf.split_to(nl + 1);
                let args: Vec<Bytes> = line[..]
                    .split(|b: &u8| b.is_ascii_whitespace())
                    .filter(|s| !s.is_empty())
                    .map(Bytes::copy_from_slice)
                    .collect();
                if args.is_empty() {
                    continue;
                }
                return Ok(Some(args));
            }
            let mut pos = 0;
            let Some((n, next)) = read_int(buf, 1)? else {
                return Ok(None);
            };
            if !(0..=1024 * 1024).contains(&n) {
                return Err(ProtocolError("invalid multibulk length".into()));
            }
            pos = pos.max(next);
            let mut spans = Vec::with_capacity(n as usize);
            for _ in 0..n {
                if pos >= buf.len() {
                    return Ok(None);
                }
                if buf[pos] != b'$' {
                    return Err(ProtocolError(format!(
                        "expected '$', got '{}'",
                        buf[pos] as char
                    )));
                }
                let Some((len, next)) = read_int(buf, pos + 1)? else {
                    return Ok(None);
                };
                if len < 0 || len as u64 > self.max_bulk_len {
                    return Err(ProtocolError("invalid bulk length".into()));
                }
                let end = next + len as usize;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                spans.push((next, end));
                pos = end + 2;
            }
            let frame = buf.split_to(pos).freeze();
            if n == 0 {
                continue;
            }
            return Ok(Some(
                spans.into_iter().map(|(s, e)| frame.slice(s..e)).collect(),
            ));
        }
    }
}

fn read_int(buf: &BytesMut, start: usize) -> Result<Option<(i64, usize)>, ProtocolError> {
    let Some(rel) = buf[start..].iter().position(|&b| b == b'\r') else {
        return Ok(None);
    };
    let end = start + rel;
    if buf.len() < end + 2 {
        return Ok(None);
    }
    let s = std::str::from_utf8(&buf[start..end])
        .map_err(|_| ProtocolError("invalid length".into()))?;
    let n = s
        .parse()
        .map_err(|_| ProtocolError("invalid length".into()))?;
    Ok(Some((n, end + 2)))
}

pub fn encode(reply: &Reply, v: ProtocolVersion, out: &mut BytesMut) {
    use std::fmt::Write;
    let r3 = v == ProtocolVersion::Resp3;
    match reply {
        Reply::Simple(s) => {
            out.extend_from_slice(b"+");
            out.extend_from_slice(s.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Reply::Status(s) => {
            let _ = write!(out, "+{s}\r\n");
        }
        Reply::Error(s) => {
            let _ = write!(out, "-{s}\r\n");
        }
        Reply::Integer(n) => {
            let _ = write!(out, ":{n}\r\n");
        }
        Reply::Bulk(b) => {
            let _ = write!(out, "${}\r\n", b.len());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        Reply::Null => out.extend_from_slice(if r3 { b"_\r\n" } else { b"$-1\r\n" }),
        Reply::NullArray => out.extend_from_slice(if r3 { b"_\r\n" } else { b"*-1\r\n" }),
        Reply::Array(items) => {
            let _ = write!(out, "*{}\r\n", items.len());
            items.iter().for_each(|i| encode(i, v, out));
        }
        Reply::Set(items) => {
            let _ = write!(out, "{}{}\r\n", if r3 { '~' } else { '*' }, items.len());
            items.iter().for_each(|i| encode(i, v, out));
        }
        Reply::Map(items) => {
            if r3 {
                let _ = write!(out, "%{}\r\n", items.len());
            } else {
                let _ = write!(out, "*{}\r\n", items.len() * 2);
            }
            for (k, val) in items {
                encode(k, v, out);
                encode(val, v, out);
            }
        }
        Reply::Double(d) => {
            if r3 {
                let _ = write!(out, ",{d}\r\n");
            } else {
                let s = d.to_string();
                let _ = write!(out, "${}\r\n{s}\r\n", s.len());
            }
        }
        Reply::Boolean(b) => {
            if r3 {
                let _ = write!(out, "#{}\r\n", if *b { 't' } else { 'f' });
            } else {
                let _ = write!(out, ":{}\r\n", *b as i32);
            }
        }
        Reply::Verbatim(s) => {
            if r3 {
                let _ = write!(out, "={}\r\ntxt:{s}\r\n", s.len() + 4);
            } else {
                let _ = write!(out, "${}\r\n{s}\r\n", s.len());
            }
        }
    }
    let _ = out.remaining();
}
