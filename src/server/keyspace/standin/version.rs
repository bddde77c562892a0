//! TEMPORARY stand-in for `crate::version` (see `super`): per-write dots over
//! plain version vectors, the smallest model of the promised interface.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActorId(pub u64);

impl ActorId {
    pub fn random() -> ActorId {
        ActorId(rand::random::<u64>() | 1)
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    pub actor: ActorId,
    pub counter: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionVector(BTreeMap<ActorId, u64>);

impl VersionVector {
    pub fn get(&self, a: ActorId) -> u64 {
        self.0.get(&a).copied().unwrap_or(0)
    }
    pub fn covers(&self, d: Dot) -> bool {
        self.get(d.actor) >= d.counter
    }
    pub fn add(&mut self, d: Dot) {
        let e = self.0.entry(d.actor).or_insert(0);
        *e = (*e).max(d.counter);
    }
    pub fn merge(&mut self, o: &VersionVector) {
        for (a, c) in &o.0 {
            self.add(Dot {
                actor: *a,
                counter: *c,
            });
        }
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    Value(Bytes),
    Tombstone,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub dot: Dot,
    pub past: VersionVector,
    pub payload: Payload,
    pub expires_at_ms: Option<u64>,
    pub written_at_ms: u64,
}

impl Version {
    pub fn is_live(&self, now_ms: u64) -> bool {
        matches!(self.payload, Payload::Value(_)) && self.expires_at_ms.is_none_or(|t| t > now_ms)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiblingSet {
    versions: Vec<Version>,
}

impl SiblingSet {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn versions(&self) -> &[Version] {
        &self.versions
    }
    pub fn len(&self) -> usize {
        self.versions.len()
    }
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }
    pub fn causal_context(&self) -> VersionVector {
        let mut vv = VersionVector::default();
        for v in &self.versions {
            vv.merge(&v.past);
            vv.add(v.dot);
        }
        vv
    }
    pub fn validate_context(&self, ctx: &VersionVector) -> Result<()> {
        let mine = self.causal_context();
        for (a, c) in &ctx.0 {
            if *c > mine.get(*a) {
                return Err(Error::invalid(format!(
                    "invalid context: it claims {a}:{c} but the key has only seen {a}:{}",
                    mine.get(*a)
                )));
            }
        }
        Ok(())
    }
    pub fn write(
        &mut self,
        actor: ActorId,
        ctx: &VersionVector,
        payload: Payload,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> Dot {
        let counter = self.causal_context().get(actor) + 1;
        self.versions.retain(|v| !ctx.covers(v.dot));
        let dot = Dot { actor, counter };
        self.versions.push(Version {
            dot,
            past: ctx.clone(),
            payload,
            expires_at_ms,
            written_at_ms: now_ms,
        });
        self.versions.sort_by_key(|v| v.dot);
        dot
    }
    pub fn merge(&mut self, other: &SiblingSet) {
        for v in &other.versions {
            if !self.versions.iter().any(|m| m.dot == v.dot) {
                self.versions.push(v.clone());
            }
        }
        let all = self.versions.clone();
        self.versions
            .retain(|v| !all.iter().any(|o| o.dot != v.dot && o.past.covers(v.dot)));
        self.versions.sort_by_key(|v| v.dot);
    }
    pub fn live(&self, now_ms: u64) -> impl Iterator<Item = &Version> {
        self.versions.iter().filter(move |v| v.is_live(now_ms))
    }
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(1);
        out.extend_from_slice(&(self.versions.len() as u32).to_be_bytes());
        for v in &self.versions {
            out.extend_from_slice(&v.dot.actor.0.to_be_bytes());
            out.extend_from_slice(&v.dot.counter.to_be_bytes());
            encode_vv(&v.past, out);
            match &v.payload {
                Payload::Value(b) => {
                    out.push(0);
                    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                    out.extend_from_slice(b);
                }
                Payload::Tombstone => out.push(1),
            }
            out.extend_from_slice(&v.expires_at_ms.unwrap_or(0).to_be_bytes());
            out.extend_from_slice(&v.written_at_ms.to_be_bytes());
        }
    }
    pub fn decode(b: &[u8]) -> Result<SiblingSet> {
        let mut r = Reader(b);
        let bad = || Error::invalid("corrupt sibling set");
        if r.u8().ok_or_else(bad)? != 1 {
            return Err(bad());
        }
        let n = r.u32().ok_or_else(bad)?;
        let mut versions = Vec::new();
        for _ in 0..n {
            let actor = ActorId(r.u64().ok_or_else(bad)?);
            let counter = r.u64().ok_or_else(bad)?;
            let past = decode_vv(&mut r).ok_or_else(bad)?;
            let payload = match r.u8().ok_or_else(bad)? {
                0 => {
                    let len = r.u32().ok_or_else(bad)? as usize;
                    Payload::Value(Bytes::copy_from_slice(r.take(len).ok_or_else(bad)?))
                }
                _ => Payload::Tombstone,
            };
            let exp = r.u64().ok_or_else(bad)?;
            let written_at_ms = r.u64().ok_or_else(bad)?;
            versions.push(Version {
                dot: Dot { actor, counter },
                past,
                payload,
                expires_at_ms: (exp != 0).then_some(exp),
                written_at_ms,
            });
        }
        Ok(SiblingSet { versions })
    }
}

fn encode_vv(vv: &VersionVector, out: &mut Vec<u8>) {
    out.extend_from_slice(&(vv.0.len() as u32).to_be_bytes());
    for (a, c) in &vv.0 {
        out.extend_from_slice(&a.0.to_be_bytes());
        out.extend_from_slice(&c.to_be_bytes());
    }
}

fn decode_vv(r: &mut Reader<'_>) -> Option<VersionVector> {
    let n = r.u32()?;
    let mut vv = VersionVector::default();
    for _ in 0..n {
        let a = ActorId(r.u64()?);
        let c = r.u64()?;
        vv.0.insert(a, c);
    }
    Some(vv)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (h, t) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

pub mod context {
    use super::*;

    pub fn encode_token(vv: &VersionVector) -> Bytes {
        let mut raw = Vec::new();
        encode_vv(vv, &mut raw);
        let mut s = String::from("c1");
        for b in raw {
            s.push_str(&format!("{b:02x}"));
        }
        Bytes::from(s)
    }

    pub fn decode_token(token: &[u8]) -> Result<VersionVector> {
        let bad = || Error::invalid("invalid context: not a token returned by VCLOCK");
        let hex = token.strip_prefix(b"c1").ok_or_else(bad)?;
        if hex.len() % 2 != 0 {
            return Err(bad());
        }
        let mut raw = Vec::new();
        for pair in hex.chunks(2) {
            let s = std::str::from_utf8(pair).map_err(|_| bad())?;
            raw.push(u8::from_str_radix(s, 16).map_err(|_| bad())?);
        }
        let mut r = Reader(&raw);
        let vv = decode_vv(&mut r).ok_or_else(bad)?;
        if !r.0.is_empty() {
            return Err(bad());
        }
        Ok(vv)
    }

    pub fn fmt_human(vv: &VersionVector) -> String {
        let parts: Vec<String> = vv.0.iter().map(|(a, c)| format!("{a}:{c}")).collect();
        parts.join(",")
    }
}
