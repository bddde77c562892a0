//! String commands: `GET`, `SET` and its variants, `MGET`/`MSET`, `APPEND`,
//! `STRLEN`, the `INCR` family. Arguments and errors as in Redis 7
//! (`t_string.c`); values are sibling sets (see the module doc of
//! [`super`]): reads may answer siblings, and the commands that need one
//! current value refuse a key with siblings with `-CONFLICT`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use super::args::{
    expire_at_ms, int_arg, Condition, ExpireKind, ExtendedArgs, ExtendedFor, NOT_AN_INTEGER,
};
use super::deps::{ActorId, LiveValues, Payload, SiblingSet, Version};
use super::extended::LongDouble;
use super::number::parse_i64;
use super::replica::{live, supersede, value_of, Change, Key};
use super::{Done, Shared};
use crate::error::{Error, Result};
use crate::protocol::Reply;

/// Redis' default `proto-max-bulk-len`: the largest string a value may become.
pub const MAX_STRING_BYTES: usize = 512 << 20;

/// The error for a command that needs one value on a key with siblings. It
/// names the key (printable, shortened) and the commands that resolve it.
pub fn conflict(key: &[u8], siblings: usize) -> Error {
    const SHOWN: usize = 64;
    let mut shown: String = String::from_utf8_lossy(&key[..key.len().min(SHOWN)])
        .chars()
        .map(|c| if c.is_control() || c == ' ' { '?' } else { c })
        .collect();
    if key.len() > SHOWN {
        shown.push_str("...");
    }
    Error::Conflict(format!(
        "{shown} has {siblings} siblings; read them with VCLOCK {shown} WITHVALUES and write \
         one value with RESOLVE {shown} <context> <value>"
    ))
}

/// The one current version of `key`, for commands that need a single value.
pub fn single<'s>(
    key: &[u8],
    set: Option<&'s SiblingSet>,
    now: u64,
) -> Result<Option<&'s Version>> {
    let versions = live(set, now);
    match versions.len() {
        0 => Ok(None),
        1 => Ok(Some(versions[0])),
        n => Err(conflict(key, n)),
    }
}

/// Counts a read in `keyspace_hits`/`keyspace_misses`, as Redis does for
/// every command that looks a key up.
pub fn count_lookup(shared: &Shared, found: bool) {
    let counters = &shared.replica.counters;
    if found {
        counters.hits.fetch_add(1, Ordering::Relaxed);
    } else {
        counters.misses.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes `value` until `expires` over everything `set` holds; a deadline
/// already passed deletes the key instead (a tombstone), as Redis does for
/// `SET k v EXAT <past>`.
fn write_until(
    actor: ActorId,
    set: Option<SiblingSet>,
    value: Bytes,
    expires: Option<u64>,
    now: u64,
) -> SiblingSet {
    match expires {
        Some(deadline) if deadline <= now => supersede(actor, set, Payload::Tombstone, None, now),
        _ => supersede(actor, set, Payload::Value(value), expires, now),
    }
}

fn bulk_or_null(value: Option<Bytes>) -> Reply {
    value.map_or(Reply::Null, Reply::Bulk)
}

/// `GET`'s answer from the read fast path.
fn live_reply(live: LiveValues) -> Reply {
    match live {
        LiveValues::Absent => Reply::Null,
        LiveValues::One { value, .. } => Reply::Bulk(value),
        LiveValues::Siblings(values) => Reply::Array(values.into_iter().map(Reply::Bulk).collect()),
    }
}

/// `GET key`
pub fn get(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    let reply = live_reply(shared.replica.read_live(Key::new(&args[1]), now)?);
    count_lookup(shared, reply != Reply::Null);
    Done::reply(reply)
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`
pub fn set(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    let opts = ExtendedArgs::parse(&args[3..], ExtendedFor::Set)?;
    let deadline = match &opts.expire {
        Some((kind, raw)) => Some(expire_at_ms(*kind, raw, now, "set")?),
        None => None,
    };
    let needs_current = opts.get || opts.keep_ttl || opts.condition != Condition::Always;
    let actor = shared.replica.actor();
    let value = args[2].clone();
    let (reply, wrote) = shared.replica.update(Key::new(&args[1]), |set| {
        let old = if needs_current {
            single(&args[1], set.as_ref(), now)?.map(|v| (value_of(v), v.expires_at_ms))
        } else {
            None
        };
        let proceed = match opts.condition {
            Condition::Always => true,
            Condition::IfAbsent => old.is_none(),
            Condition::IfPresent => old.is_some(),
        };
        let expires = if opts.keep_ttl {
            old.as_ref().and_then(|(_, expires)| *expires)
        } else {
            deadline
        };
        let reply = match (opts.get, proceed) {
            (true, _) => bulk_or_null(old.map(|(v, _)| v)),
            (false, true) => Reply::OK,
            (false, false) => Reply::Null,
        };
        if !proceed {
            return Ok((reply, Change::Keep));
        }
        Ok((
            reply,
            Change::Put(write_until(actor, set, value, expires, now)),
        ))
    })?;
    Done::wrote(reply, wrote)
}

/// `SETNX key value`
pub fn setnx(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    let actor = shared.replica.actor();
    let value = args[2].clone();
    let (reply, wrote) = shared.replica.update(Key::new(&args[1]), |set| {
        if single(&args[1], set.as_ref(), now)?.is_some() {
            return Ok((Reply::Integer(0), Change::Keep));
        }
        let set = supersede(actor, set, Payload::Value(value), None, now);
        Ok((Reply::Integer(1), Change::Put(set)))
    })?;
    Done::wrote(reply, wrote)
}

/// `SETEX key seconds value` and `PSETEX key milliseconds value`
pub fn setex(shared: &Shared, args: &[Bytes], now: u64, kind: ExpireKind) -> Result<Done> {
    let command = if kind == ExpireKind::Ex {
        "setex"
    } else {
        "psetex"
    };
    let deadline = expire_at_ms(kind, &args[2], now, command)?;
    let actor = shared.replica.actor();
    let value = args[3].clone();
    let (_, wrote) = shared.replica.update(Key::new(&args[1]), |set| {
        let set = write_until(actor, set, value, Some(deadline), now);
        Ok(((), Change::Put(set)))
    })?;
    Done::wrote(Reply::OK, wrote)
}

/// `GETSET key value`
pub fn getset(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    let actor = shared.replica.actor();
    let value = args[2].clone();
    let (old, wrote) = shared.replica.update(Key::new(&args[1]), |set| {
        let old = single(&args[1], set.as_ref(), now)?.map(value_of);
        let set = supersede(actor, set, Payload::Value(value), None, now);
        Ok((old, Change::Put(set)))
    })?;
    count_lookup(shared, old.is_some());
    Done::wrote(bulk_or_null(old), wrote)
}

/// `GETDEL key`
pub fn getdel(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    let actor = shared.replica.actor();
    let (old, wrote) = shared.replica.update(Key::new(&args[1]), |set| {
        let Some(old) = single(&args[1], set.as_ref(), now)?.map(value_of) else {
            return Ok((None, Change::Keep));
        };
        let set = supersede(actor, set, Payload::Tombstone, None, now);
        Ok((Some(old), Change::Put(set)))
    })?;
    count_lookup(shared, old.is_some());
    Done::wrote(bulk_or_null(old), wrote)
}

/// `GETEX key [EX s|PX ms|EXAT s|PXAT ms|PERSIST]`
pub fn getex(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    let opts = ExtendedArgs::parse(&args[2..], ExtendedFor::GetEx)?;
    let actor = shared.replica.actor();
    let (old, wrote) = shared.replica.update(Key::new(&args[1]), |set| {
        let Some((value, expires)) =
            single(&args[1], set.as_ref(), now)?.map(|v| (value_of(v), v.expires_at_ms))
        else {
            return Ok((None, Change::Keep));
        };
        // Like Redis, the expiry argument is checked only for an existing key.
        let change = match &opts.expire {
            Some((kind, raw)) => {
                let deadline = expire_at_ms(*kind, raw, now, "getex")?;
                Change::Put(write_until(actor, set, value.clone(), Some(deadline), now))
            }
            None if opts.persist && expires.is_some() => Change::Put(supersede(
                actor,
                set,
                Payload::Value(value.clone()),
                None,
                now,
            )),
            None => Change::Keep,
        };
        Ok((Some(value), change))
    })?;
    count_lookup(shared, old.is_some());
    Done::wrote(bulk_or_null(old), wrote)
}

/// `MGET key [key ...]`: per key nil, a bulk string, or an array of siblings.
pub fn mget(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    let mut replies = Vec::with_capacity(args.len() - 1);
    for key in &args[1..] {
        let reply = live_reply(shared.replica.read_live(Key::new(key), now)?);
        count_lookup(shared, reply != Reply::Null);
        replies.push(reply);
    }
    Done::reply(Reply::Array(replies))
}

/// Key/value pairs of `MSET`/`MSETNX`, last value winning for a repeated key.
fn pairs<'a>(args: &'a [Bytes], command: &str) -> Result<Vec<(Key<'a>, Bytes)>> {
    if args.len() < 3 || args.len() % 2 == 0 {
        return Err(Error::invalid(format!(
            "wrong number of arguments for '{command}' command"
        )));
    }
    let mut out: Vec<(Key<'a>, Bytes)> = Vec::with_capacity(args.len() / 2);
    let mut seen: HashMap<&[u8], usize> = HashMap::new();
    for pair in args[1..].chunks(2) {
        let key = Key::new(&pair[0]);
        match seen.get(&pair[0][..]) {
            Some(&i) => out[i].1 = pair[1].clone(),
            None => {
                seen.insert(&pair[0][..], out.len());
                out.push((key, pair[1].clone()));
            }
        }
    }
    Ok(out)
}

/// `MSET key value [key value ...]`, atomic on this node.
pub fn mset(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    let pairs = pairs(args, "mset")?;
    let keys: Vec<Key<'_>> = pairs.iter().map(|(k, _)| *k).collect();
    let actor = shared.replica.actor();
    let (_, wrote) = shared.replica.update_many(&keys, |sets| {
        let changes = sets
            .into_iter()
            .zip(&pairs)
            .map(|(set, (_, value))| {
                Change::Put(supersede(
                    actor,
                    set,
                    Payload::Value(value.clone()),
                    None,
                    now,
                ))
            })
            .collect();
        Ok(((), changes))
    })?;
    Done::wrote(Reply::OK, wrote)
}

/// `MSETNX key value [key value ...]`: all or nothing, atomic on this node.
pub fn msetnx(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    let pairs = pairs(args, "msetnx")?;
    let keys: Vec<Key<'_>> = pairs.iter().map(|(k, _)| *k).collect();
    let actor = shared.replica.actor();
    let (reply, wrote) = shared.replica.update_many(&keys, |sets| {
        let mut any_exists = false;
        for (set, (key, _)) in sets.iter().zip(&pairs) {
            any_exists |= single(key.bytes, set.as_ref(), now)?.is_some();
        }
        if any_exists {
            let keep = sets.iter().map(|_| Change::Keep).collect();
            return Ok((Reply::Integer(0), keep));
        }
        let changes = sets
            .into_iter()
            .zip(&pairs)
            .map(|(set, (_, value))| {
                Change::Put(supersede(
                    actor,
                    set,
                    Payload::Value(value.clone()),
                    None,
                    now,
                ))
            })
            .collect();
        Ok((Reply::Integer(1), changes))
    })?;
    Done::wrote(reply, wrote)
}

/// `APPEND key value`: keeps the key's expiry, as Redis does.
pub fn append(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    let actor = shared.replica.actor();
    let suffix = &args[2];
    let (len, wrote) = shared.replica.update(Key::new(&args[1]), |set| {
        let (old, expires) = match single(&args[1], set.as_ref(), now)? {
            Some(v) => (value_of(v), v.expires_at_ms),
            None => (Bytes::new(), None),
        };
        let len = old.len() + suffix.len();
        if len > MAX_STRING_BYTES {
            return Err(Error::invalid(
                "string exceeds maximum allowed size (proto-max-bulk-len)",
            ));
        }
        let mut joined = BytesMut::with_capacity(len);
        joined.extend_from_slice(&old);
        joined.extend_from_slice(suffix);
        let set = supersede(actor, set, Payload::Value(joined.freeze()), expires, now);
        Ok((len, Change::Put(set)))
    })?;
    Done::wrote(Reply::Integer(len as i64), wrote)
}

/// `STRLEN key`
pub fn strlen(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    let set = shared.replica.read(Key::new(&args[1]))?;
    let len = single(&args[1], set.as_ref(), now)?.map(|v| value_of(v).len());
    count_lookup(shared, len.is_some());
    let len = len.unwrap_or(0);
    Done::reply(Reply::Integer(len as i64))
}

/// `INCR`/`DECR` (`fixed` = ±1) and `INCRBY key increment`.
pub fn incr_by(shared: &Shared, args: &[Bytes], now: u64, fixed: Option<i64>) -> Result<Done> {
    let by = match fixed {
        Some(by) => by,
        None => int_arg(&args[2])?,
    };
    add_to_counter(shared, &args[1], by, now)
}

/// `DECRBY key decrement`
pub fn decr_by(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    let by = int_arg(&args[2])?;
    let negated = by
        .checked_neg()
        .ok_or_else(|| Error::invalid("decrement would overflow"))?;
    add_to_counter(shared, &args[1], negated, now)
}

fn add_to_counter(shared: &Shared, key: &[u8], by: i64, now: u64) -> Result<Done> {
    let actor = shared.replica.actor();
    let (value, wrote) = shared.replica.update(Key::new(key), |set| {
        let (old, expires) = match single(key, set.as_ref(), now)? {
            Some(v) => (
                parse_i64(&value_of(v)).ok_or_else(|| Error::invalid(NOT_AN_INTEGER))?,
                v.expires_at_ms,
            ),
            None => (0, None),
        };
        let new = old
            .checked_add(by)
            .ok_or_else(|| Error::invalid("increment or decrement would overflow"))?;
        let payload = Payload::Value(Bytes::from(new.to_string()));
        Ok((
            new,
            Change::Put(supersede(actor, set, payload, expires, now)),
        ))
    })?;
    Done::wrote(Reply::Integer(value), wrote)
}

/// `INCRBYFLOAT key increment`, in x87 extended precision like Redis.
pub fn incr_by_float(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    let not_float = || Error::invalid("value is not a valid float");
    let actor = shared.replica.actor();
    let (text, wrote) = shared.replica.update(Key::new(&args[1]), |set| {
        let (old, expires) = match single(&args[1], set.as_ref(), now)? {
            Some(v) => (
                LongDouble::parse(&value_of(v)).ok_or_else(not_float)?,
                v.expires_at_ms,
            ),
            None => (LongDouble::ZERO, None),
        };
        let by = LongDouble::parse(&args[2]).ok_or_else(not_float)?;
        let sum = old
            .checked_add(by)
            .filter(|sum| sum.is_finite())
            .ok_or_else(|| Error::invalid("increment would produce NaN or Infinity"))?;
        let text = Bytes::from(sum.to_human_string());
        let set = supersede(actor, set, Payload::Value(text.clone()), expires, now);
        Ok((text, Change::Put(set)))
    })?;
    Done::wrote(Reply::Bulk(text), wrote)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_errors_name_the_key_printably_and_shortly() {
        let text = conflict(b"user:1", 3).to_resp();
        assert_eq!(
            text,
            "CONFLICT user:1 has 3 siblings; read them with VCLOCK user:1 WITHVALUES and write \
             one value with RESOLVE user:1 <context> <value>"
        );
        let odd = conflict(b"a b\r\n", 2).to_resp();
        assert!(odd.starts_with("CONFLICT a?b?? has 2"), "{odd}");
        let long = conflict(&[b'x'; 100], 2).to_resp();
        assert!(
            long.contains(&format!("{}... has", "x".repeat(64))),
            "{long}"
        );
    }
}
