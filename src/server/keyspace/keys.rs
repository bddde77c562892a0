//! Whole-key commands: `DEL`/`UNLINK`, `EXISTS`, `TYPE`, `KEYS`, `SCAN`,
//! `RANDOMKEY`, `DBSIZE`, `FLUSHALL`/`FLUSHDB` (Redis 7's `db.c`).

use std::collections::HashSet;

use bytes::Bytes;
use rand::Rng;

use super::args::{int_arg, is, syntax_error};
use super::cursor::{CursorTable, Resume};
use super::deps::{LiveValues, Payload, SiblingSet};
use super::glob;
use super::layout::PartitionId;
use super::number::parse_cursor;
use super::replica::{supersede, Change, Key, Stored};
use super::strings::count_lookup;
use super::{Done, Shared};
use crate::error::{Error, Result};
use crate::protocol::Reply;
use crate::storage::SeqNo;

/// Keys read per engine scan when a command walks a whole partition.
const WALK_BATCH: usize = 1024;

fn has_live(set: &SiblingSet, now: u64) -> bool {
    set.live(now).next().is_some()
}

/// Distinct keys of `args[1..]`, in first-seen order.
fn distinct_keys(args: &[Bytes]) -> Vec<Key<'_>> {
    let mut seen: HashSet<&[u8]> = HashSet::with_capacity(args.len());
    args[1..]
        .iter()
        .filter(|arg| seen.insert(&arg[..]))
        .map(|arg| Key::new(arg))
        .collect()
}

/// `DEL key [key ...]` / `UNLINK`: writes a tombstone version over each key
/// that has a live value; answers how many such keys there were.
pub fn del(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    let keys = distinct_keys(args);
    let actor = shared.replica.actor();
    let (deleted, wrote) = shared.replica.update_many(&keys, |sets| {
        let mut deleted = 0i64;
        let changes = sets
            .into_iter()
            .map(|set| match set {
                Some(set) if has_live(&set, now) => {
                    deleted += 1;
                    Change::Put(supersede(actor, Some(set), Payload::Tombstone, None, now))
                }
                _ => Change::Keep,
            })
            .collect();
        Ok((deleted, changes))
    })?;
    Done::wrote(Reply::Integer(deleted), wrote)
}

/// `EXISTS key [key ...]`: a repeated key counts each time, as in Redis.
pub fn exists(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    let mut count = 0;
    for key in &args[1..] {
        let found = !matches!(
            shared.replica.read_live(Key::new(key), now)?,
            LiveValues::Absent
        );
        count_lookup(shared, found);
        count += i64::from(found);
    }
    Done::reply(Reply::Integer(count))
}

/// `TYPE key`: every value is a string.
pub fn type_of(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    let found = !matches!(
        shared.replica.read_live(Key::new(&args[1]), now)?,
        LiveValues::Absent
    );
    count_lookup(shared, found);
    let name = if found { "string" } else { "none" };
    Done::reply(Reply::Simple(name))
}

/// `KEYS pattern`: reads every partition (from the pattern's literal prefix
/// on), so it costs a pass over the matching part of the data, as in Redis.
pub fn keys(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    let pattern = &args[1][..];
    let replica = &shared.replica;
    let mut found = Vec::new();
    if glob::is_literal(pattern) {
        if replica
            .read(Key::new(pattern))?
            .is_some_and(|s| has_live(&s, now))
        {
            found.push(Reply::Bulk(args[1].clone()));
        }
        return Done::reply(Reply::Array(found));
    }
    // Like Redis, `*` skips matching (the matcher itself rejects an empty key).
    let all = pattern == b"*";
    let prefix = glob::literal_prefix(pattern);
    for p in 0..replica.partitions() {
        replica.scan_prefix(PartitionId(p as u16), prefix, now, |key, live| {
            if live && (all || glob::matches(pattern, key)) {
                found.push(Reply::Bulk(Bytes::copy_from_slice(key)));
            }
        })?;
    }
    Done::reply(Reply::Array(found))
}

/// The types `SCAN ... TYPE` knows; only `string` exists here.
const REDIS_TYPES: &[&str] = &["string", "list", "set", "zset", "hash", "stream"];

/// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`; the cursor is
/// described in [`super::cursor`]. `COUNT` bounds the keys examined (default
/// 10), like Redis; expired and deleted keys are examined but not returned.
pub fn scan(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    let cursor = parse_cursor(&args[1]).ok_or_else(|| Error::invalid("invalid cursor"))?;
    let mut count: usize = 10;
    let mut pattern: Option<&[u8]> = None;
    let mut only_strings = true;
    let mut i = 2;
    while i < args.len() {
        let has_value = i + 1 < args.len();
        if is(&args[i], "count") && has_value {
            let n = int_arg(&args[i + 1])?;
            if n < 1 {
                return Err(syntax_error());
            }
            count = usize::try_from(n).unwrap_or(usize::MAX);
        } else if is(&args[i], "match") && has_value {
            pattern = (&args[i + 1][..] != b"*").then(|| &args[i + 1][..]);
        } else if is(&args[i], "type") && has_value {
            let name = String::from_utf8_lossy(&args[i + 1]).to_ascii_lowercase();
            if !REDIS_TYPES.contains(&name.as_str()) {
                return Err(Error::invalid(format!(
                    "unknown type name '{}'",
                    String::from_utf8_lossy(&args[i + 1])
                )));
            }
            only_strings = name == "string";
        } else {
            return Err(syntax_error());
        }
        i += 2;
    }

    let replica = &shared.replica;
    let q = replica.partitions();
    let position = shared.cursors.resolve(cursor);
    let mut found = Vec::new();
    if u32::from(position.partition.0) >= q {
        return Done::reply(scan_reply(0, found));
    }
    let mut partition = position.partition;
    let mut offset = position.offset;
    let mut after = match position.resume {
        Resume::After(key) => Some(key),
        Resume::Skip(0) => None,
        // The remembered key is gone: pass `offset` keys again from the start
        // (or, if the partition has shrunk below that, start it over).
        Resume::Skip(n) => {
            let key = replica.key_at(partition, n - 1)?;
            if key.is_none() {
                offset = 0;
            }
            key
        }
    };
    let mut examined = 0usize;
    let next_cursor = loop {
        let want = count - examined;
        let batch = replica.scan_partition(partition, after.as_deref(), want)?;
        examined += batch.len();
        offset += batch.len() as u64;
        for stored in &batch {
            let wanted = only_strings && pattern.is_none_or(|p| glob::matches(p, &stored.key));
            if wanted && stored.is_live(now)? {
                found.push(Reply::Bulk(stored.key.clone()));
            }
        }
        if batch.len() == want {
            if let Some(last) = batch.last() {
                break shared.cursors.remember(partition, offset, last.key.clone());
            }
        }
        if u32::from(partition.0) + 1 >= q {
            break 0;
        }
        partition = PartitionId(partition.0 + 1);
        after = None;
        offset = 0;
        if examined >= count {
            break CursorTable::partition_start(partition);
        }
    };
    Done::reply(scan_reply(next_cursor, found))
}

fn scan_reply(cursor: u64, keys: Vec<Reply>) -> Reply {
    Reply::Array(vec![
        Reply::Bulk(Bytes::from(cursor.to_string())),
        Reply::Array(keys),
    ])
}

/// `RANDOMKEY`: probes random places of random partitions; falls back to a
/// walk when probes only meet expired or deleted keys.
pub fn random_key(shared: &Shared, now: u64) -> Result<Done> {
    let replica = &shared.replica;
    if shared
        .replica
        .counters
        .keys
        .load(std::sync::atomic::Ordering::Relaxed)
        <= 0
    {
        return Done::reply(Reply::Null);
    }
    let mut rng = rand::thread_rng();
    let q = replica.partitions();
    for _ in 0..64 {
        let partition = PartitionId(rng.gen_range(0..q) as u16);
        let probe: [u8; 8] = rng.gen();
        let mut candidates = replica.scan_partition(partition, Some(&probe), 8)?;
        if candidates.is_empty() {
            candidates = replica.scan_partition(partition, None, 8)?;
        }
        if let Some(key) = first_live(&candidates, now)? {
            return Done::reply(Reply::Bulk(key));
        }
    }
    for p in 0..q {
        let partition = PartitionId(p as u16);
        let mut after: Option<Bytes> = None;
        loop {
            let batch = replica.scan_partition(partition, after.as_deref(), WALK_BATCH)?;
            if let Some(key) = first_live(&batch, now)? {
                return Done::reply(Reply::Bulk(key));
            }
            match batch.last() {
                Some(last) if batch.len() == WALK_BATCH => after = Some(last.key.clone()),
                _ => break,
            }
        }
    }
    Done::reply(Reply::Null)
}

fn first_live(stored: &[Stored], now: u64) -> Result<Option<Bytes>> {
    for entry in stored {
        if entry.is_live(now)? {
            return Ok(Some(entry.key.clone()));
        }
    }
    Ok(None)
}

/// `DBSIZE`: the maintained key count, O(1).
pub fn dbsize(shared: &Shared) -> Result<Done> {
    let keys = shared
        .replica
        .counters
        .keys
        .load(std::sync::atomic::Ordering::Relaxed);
    Done::reply(Reply::Integer(keys.max(0)))
}

/// `FLUSHALL [ASYNC|SYNC]` / `FLUSHDB [ASYNC|SYNC]`: writes a tombstone over
/// every key that holds a value, one partition batch at a time, each under
/// its key's lock (a key is never erased; see [`super`]).
pub fn flush(shared: &Shared, args: &[Bytes], now: u64) -> Result<Done> {
    match args.len() {
        1 => {}
        2 if is(&args[1], "sync") || is(&args[1], "async") => {}
        _ => return Err(syntax_error()),
    }
    let replica = &shared.replica;
    let actor = replica.actor();
    let mut last_write: Option<SeqNo> = None;
    for p in 0..replica.partitions() {
        let partition = PartitionId(p as u16);
        // Resume after the last key seen (not from the start) so that
        // concurrent writers cannot keep the flush going forever.
        let mut after: Option<Bytes> = None;
        loop {
            let batch = replica.scan_partition(partition, after.as_deref(), WALK_BATCH)?;
            for stored in &batch {
                let (_, wrote) = replica.update(Key::new(&stored.key), |set| match set {
                    Some(set) if !set.is_only_tombstones() => {
                        let set = supersede(actor, Some(set), Payload::Tombstone, None, now);
                        Ok(((), Change::Put(set)))
                    }
                    _ => Ok(((), Change::Keep)),
                })?;
                last_write = last_write.max(wrote);
            }
            match batch.last() {
                Some(last) if batch.len() == WALK_BATCH => after = Some(last.key.clone()),
                _ => break,
            }
        }
    }
    Done::wrote(Reply::OK, last_write)
}
