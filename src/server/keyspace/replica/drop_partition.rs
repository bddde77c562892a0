//! Dropping the keys of a partition this node handed to its new owners
//! (join and leave, see `server::rebalance`).
//!
//! Compare-and-delete, key by key: a key goes only if its stored set is
//! still exactly the bytes that were streamed (and acknowledged by every
//! owner). A write that landed after the key was read for streaming (a
//! coordinator with a stale ring, a replayed hint) changed those bytes, so
//! the key stays and the next rebalance round streams it again: nothing
//! acknowledged to a client is ever deleted before an owner has it.
//!
//! Each batch holds the locks of its keys (ascending stripes, as
//! `update_many` does) from the read to the engine write, and moves the
//! `DBSIZE` counters and the partition's Merkle tree by exactly what it
//! deletes. A key's expiry-index entry goes with it (the index has one entry
//! per key with a deadline, at the deadline its facts name; see
//! `layout.rs`). The deletes are not fsynced: after a crash that loses them
//! the keys come back, are found held, streamed and dropped again.

use super::{layout, Facts, Key, Replica, Stored, TreeDelta, WriteBatch};
use crate::error::Result;

/// Keys deleted per engine batch (and lock set).
const DROP_BATCH: usize = 256;

/// What [`Replica::drop_unchanged`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Keys deleted.
    pub keys: u64,
    /// Keys left in place because they changed since they were read.
    pub changed: u64,
}

impl Replica {
    /// Deletes each of `entries` (keys of `partition` with the encoded sets
    /// read from this replica) whose stored set is still exactly the one
    /// given. Entries of another partition are left alone (counted as
    /// changed).
    pub fn drop_unchanged(
        &self,
        partition: layout::PartitionId,
        entries: &[Stored],
    ) -> Result<Dropped> {
        let mut out = Dropped::default();
        for batch_entries in entries.chunks(DROP_BATCH) {
            let keys: Vec<Key<'_>> = batch_entries.iter().map(|e| Key::new(&e.key)).collect();
            let _guards = self.lock_many(&keys);
            let mut batch = WriteBatch::new();
            let mut deltas = Vec::new();
            let mut gone = Vec::new();
            for (key, entry) in keys.iter().zip(batch_entries) {
                if self.partition(*key) != partition {
                    out.changed += 1;
                    continue;
                }
                let (stored, current) = self.read_stored(*key)?;
                if stored.as_deref() != Some(&entry.value[..]) {
                    out.changed += 1;
                    continue;
                }
                let before = Facts::of(current.as_ref());
                batch.delete(&layout::data_key(partition, key.bytes));
                if let Some(deadline) = before.deadline {
                    batch.delete(&layout::expiry_key(deadline, key.bytes));
                }
                deltas.push(TreeDelta::of(
                    partition,
                    key.hash,
                    key.bytes,
                    Some(&entry.value),
                    None,
                ));
                gone.push(before);
            }
            if batch.is_empty() {
                continue;
            }
            self.write(&batch, &deltas)?;
            for before in gone {
                self.counters.apply(before, Facts::default());
            }
            out.keys += deltas.len() as u64;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use bytes::Bytes;

    use super::super::{supersede, Change};
    use super::*;
    use crate::server::keyspace::deps::{ActorId, Engine, Payload, SiblingLimits, StorageOptions};

    fn replica(dir: &std::path::Path) -> Replica {
        let engine = Engine::open(dir, StorageOptions::default()).expect("engine");
        Replica::open(
            Arc::new(engine),
            ActorId(1),
            4,
            SiblingLimits::default(),
            None,
        )
        .expect("replica")
    }

    fn set(r: &Replica, key: &[u8], value: &'static [u8], expires: Option<u64>) {
        r.update(Key::new(key), |s| {
            let new = supersede(
                ActorId(1),
                s,
                Payload::Value(Bytes::from_static(value)),
                expires,
                1_000,
            );
            Ok(((), Change::Put(new)))
        })
        .expect("write");
    }

    #[test]
    fn only_unchanged_keys_go_with_their_expiry_entries_counters_and_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = replica(dir.path());
        let keys: Vec<Vec<u8>> = (0..300u32).map(|i| format!("k{i}").into_bytes()).collect();
        for (i, k) in keys.iter().enumerate() {
            set(&r, k, b"v", (i % 2 == 0).then_some(9_000_000));
        }
        let p = r.partition(Key::new(&keys[0]));
        r.build_tree(p).expect("build");
        let entries = r.scan_partition(p, None, usize::MAX).expect("scan");
        let in_p = entries.len() as u64;
        assert!(in_p > 30, "{in_p} keys in the partition");
        // One key changes after it was read: it must stay.
        let changed = entries[3].key.clone();
        set(&r, &changed, b"newer", None);
        let keys_before = r.counters.keys.load(Ordering::Relaxed);

        let dropped = r.drop_unchanged(p, &entries).expect("drop");
        assert_eq!(
            dropped,
            Dropped {
                keys: in_p - 1,
                changed: 1
            }
        );
        let left = r.scan_partition(p, None, usize::MAX).expect("scan");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].key, changed);
        assert_eq!(
            r.counters.keys.load(Ordering::Relaxed),
            keys_before - (in_p as i64 - 1)
        );
        // No expiry entry of a dropped key is left behind.
        let due = r.due_expiries(u64::MAX, usize::MAX).expect("due");
        assert!(due
            .iter()
            .all(|(_, k)| r.partition(Key::new(k)) != p || *k == changed));
        // The tree still matches the data.
        assert!(r.check_tree(p).expect("check").drifted.is_empty());
        // Dropping again finds nothing to drop.
        assert_eq!(r.drop_unchanged(p, &entries).expect("again").keys, 0);
    }
}
