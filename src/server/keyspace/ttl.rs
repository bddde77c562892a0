//! Expiry commands: `EXPIRE`, `PEXPIRE`, `EXPIREAT`, `PEXPIREAT` (with Redis
//! 7's `NX`/`XX`/`GT`/`LT`), `TTL`, `PTTL`, `EXPIRETIME`, `PEXPIRETIME`,
//! `PERSIST` (Redis 7's `expire.c`).
//!
//! A deadline is part of a version, so setting or removing one writes a new
//! version with the same value (superseding the old one). On a key with
//! siblings the read-only commands report the key's deadline, the moment the
//! last live sibling expires (`-1` if any sibling never expires); the writing
//! ones answer `-CONFLICT`.

use bytes::Bytes;

use super::args::{int_arg, is, now_as_i64};
use super::deps::{Payload, SiblingSet};
use super::replica::{live, supersede, value_of, Change, Key};
use super::strings::{count_lookup, single};
use super::{Done, Shared};
use crate::error::{Error, Result};
use crate::protocol::Reply;

/// Whether the time argument is relative to now or an absolute Unix time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    Relative,
    Absolute,
}

/// What `TTL`-like commands show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Show {
    /// Time left (`TTL`, `PTTL`).
    Remaining,
    /// The absolute deadline (`EXPIRETIME`, `PEXPIRETIME`).
    Deadline,
}

#[derive(Clone, Copy, Debug, Default)]
struct Flags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
}

fn parse_flags(options: &[Bytes]) -> Result<Flags> {
    let mut flags = Flags::default();
    for opt in options {
        if is(opt, "nx") {
            flags.nx = true;
        } else if is(opt, "xx") {
            flags.xx = true;
        } else if is(opt, "gt") {
            flags.gt = true;
        } else if is(opt, "lt") {
            flags.lt = true;
        } else {
            return Err(Error::invalid(format!(
                "Unsupported option {}",
                String::from_utf8_lossy(opt)
            )));
        }
    }
    if flags.nx && (flags.xx || flags.gt || flags.lt) {
        return Err(Error::invalid(
            "NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if flags.gt && flags.lt {
        return Err(Error::invalid(
            "GT and LT options at the same time are not compatible",
        ));
    }
    Ok(flags)
}

/// `EXPIRE key seconds [NX|XX|GT|LT]` and its siblings; `unit_ms` is 1000
/// for seconds, 1 for milliseconds.
pub fn expire(shared: &Shared, args: &[Bytes], now: u64, base: Base, unit_ms: i64) -> Result<Done> {
    let command = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    let invalid = || Error::invalid(format!("invalid expire time in '{command}' command"));
    let flags = parse_flags(&args[3..])?;
    let mut when = int_arg(&args[2])?;
    if unit_ms == 1000 {
        when = when.checked_mul(1000).ok_or_else(invalid)?;
    }
    if base == Base::Relative {
        when = when.checked_add(now_as_i64(now)).ok_or_else(invalid)?;
    }
    let actor = shared.replica.actor();
    let (applied, wrote) = shared.replica.update(Key::new(&args[1]), |set| {
        let Some((value, current)) =
            single(&args[1], set.as_ref(), now)?.map(|v| (value_of(v), v.expires_at_ms))
        else {
            return Ok((false, Change::Keep));
        };
        // An unset expiry counts as infinite, as in Redis.
        let current = current.map(|t| i64::try_from(t).unwrap_or(i64::MAX));
        let refused = (flags.nx && current.is_some())
            || (flags.xx && current.is_none())
            || (flags.gt && current.is_none_or(|c| when <= c))
            || (flags.lt && current.is_some_and(|c| when >= c));
        if refused {
            return Ok((false, Change::Keep));
        }
        let set = if when <= now_as_i64(now) {
            // A deadline in the past deletes the key, as in Redis.
            supersede(actor, set, Payload::Tombstone, None, now)
        } else {
            supersede(actor, set, Payload::Value(value), Some(when as u64), now)
        };
        Ok((true, Change::Put(set)))
    })?;
    Done::wrote(Reply::Integer(i64::from(applied)), wrote)
}

/// When the key's last live version expires: `Err(-2)` absent, `Ok(None)`
/// never.
fn key_deadline(set: Option<&SiblingSet>, now: u64) -> std::result::Result<Option<u64>, i64> {
    let versions = live(set, now);
    if versions.is_empty() {
        return Err(-2);
    }
    let mut deadline = 0;
    for v in versions {
        match v.expires_at_ms {
            None => return Ok(None),
            Some(t) => deadline = deadline.max(t),
        }
    }
    Ok(Some(deadline))
}

/// `TTL`, `PTTL`, `EXPIRETIME`, `PEXPIRETIME`: -2 for a missing key, -1 for
/// one without expiry. Seconds are rounded to nearest, as Redis does.
pub fn ttl(shared: &Shared, args: &[Bytes], now: u64, show: Show, unit_ms: u64) -> Result<Done> {
    let set = shared.replica.read(Key::new(&args[1]))?;
    let deadline = key_deadline(set.as_ref(), now);
    count_lookup(shared, deadline.is_ok());
    let answer = match deadline {
        Err(code) => code,
        Ok(None) => -1,
        Ok(Some(deadline)) => {
            let ms = match show {
                Show::Remaining => deadline.saturating_sub(now),
                Show::Deadline => deadline,
            };
            let shown = if unit_ms == 1 { ms } else { (ms + 500) / 1000 };
            i64::try_from(shown).unwrap_or(i64::MAX)
        }
    };
    Done::reply(Reply::Integer(answer))
}

/// `PERSIST key`: 1 if an expiry was removed.
pub fn persist(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    let actor = shared.replica.actor();
    let (removed, wrote) = shared.replica.update(Key::new(&args[1]), |set| {
        match single(&args[1], set.as_ref(), now)?.map(|v| (value_of(v), v.expires_at_ms)) {
            Some((value, Some(_))) => {
                let set = supersede(actor, set, Payload::Value(value), None, now);
                Ok((true, Change::Put(set)))
            }
            _ => Ok((false, Change::Keep)),
        }
    })?;
    Done::wrote(Reply::Integer(i64::from(removed)), wrote)
}
