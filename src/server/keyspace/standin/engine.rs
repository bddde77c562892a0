//! TEMPORARY in-memory stand-in for `crate::storage::Engine` (see `super`).
//! A `BTreeMap` behind a lock; `close` and `flush` write a snapshot file so
//! that reopen tests work. Not crash-safe; never used once `engine` lands.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use crate::config::FsyncPolicy;
use crate::error::{Error, Result};
use crate::storage::SeqNo;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterDecision {
    Keep,
    Remove,
}

pub trait CompactionFilter: Send + Sync {
    fn filter(&self, key: &[u8], value: &[u8]) -> FilterDecision;
}

#[derive(Clone, Default)]
pub struct Options {
    pub fsync: FsyncPolicy,
    pub memtable_bytes: usize,
    pub compaction_filter: Option<Arc<dyn CompactionFilter>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("fsync", &self.fsync)
            .finish()
    }
}

#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    ops: Vec<(Bytes, Option<Bytes>)>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.ops.push((
            Bytes::copy_from_slice(key),
            Some(Bytes::copy_from_slice(value)),
        ));
    }
    pub fn delete(&mut self, key: &[u8]) {
        self.ops.push((Bytes::copy_from_slice(key), None));
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn clear(&mut self) {
        self.ops.clear();
    }
}

#[derive(Clone, Debug, Default)]
pub struct EngineStats {
    pub live_bytes_estimate: u64,
}

pub struct Engine {
    map: RwLock<BTreeMap<Bytes, Bytes>>,
    seq: AtomicU64,
    dir: PathBuf,
    filter: Option<Arc<dyn CompactionFilter>>,
}

pub struct Scan {
    items: std::vec::IntoIter<(Bytes, Bytes)>,
}

impl Iterator for Scan {
    type Item = Result<(Bytes, Bytes)>;
    fn next(&mut self) -> Option<Self::Item> {
        self.items.next().map(Ok)
    }
}

impl Engine {
    pub fn open(dir: &Path, opts: Options) -> Result<Engine> {
        fs::create_dir_all(dir)?;
        let mut map = BTreeMap::new();
        let snapshot = dir.join("standin.snapshot");
        if let Ok(bytes) = fs::read(&snapshot) {
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let (k, r) = take(rest).ok_or_else(|| Error::corruption(&snapshot, 0, "bad"))?;
                let (v, r) = take(r).ok_or_else(|| Error::corruption(&snapshot, 0, "bad"))?;
                map.insert(Bytes::copy_from_slice(k), Bytes::copy_from_slice(v));
                rest = r;
            }
        }
        Ok(Engine {
            map: RwLock::new(map),
            seq: AtomicU64::new(0),
            dir: dir.to_path_buf(),
            filter: opts.compaction_filter,
        })
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.map.read().get(key).cloned())
    }

    pub fn write(&self, batch: &WriteBatch) -> Result<SeqNo> {
        self.write_unsynced(batch)
    }

    pub fn write_unsynced(&self, batch: &WriteBatch) -> Result<SeqNo> {
        let mut map = self.map.write();
        for (k, v) in &batch.ops {
            match v {
                Some(v) => {
                    map.insert(k.clone(), v.clone());
                }
                None => {
                    map.remove(k);
                }
            }
        }
        Ok(SeqNo(self.seq.fetch_add(1, Ordering::SeqCst) + 1))
    }

    pub fn wait_synced(&self, _seq: SeqNo) -> Result<()> {
        Ok(())
    }

    pub fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<Scan> {
        let map = self.map.read();
        let items: Vec<(Bytes, Bytes)> = map
            .range::<[u8], _>((start, end))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Scan {
            items: items.into_iter(),
        })
    }

    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Scan> {
        let map = self.map.read();
        let items: Vec<(Bytes, Bytes)> = map
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Scan {
            items: items.into_iter(),
        })
    }

    pub fn flush(&self) -> Result<()> {
        self.snapshot()
    }

    pub fn compact(&self) -> Result<()> {
        if let Some(filter) = &self.filter {
            self.map
                .write()
                .retain(|k, v| filter.filter(k, v) == FilterDecision::Keep);
        }
        Ok(())
    }

    pub fn sync(&self) -> Result<()> {
        self.snapshot()
    }

    pub fn close(&self) -> Result<()> {
        self.snapshot()
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats::default()
    }

    fn snapshot(&self) -> Result<()> {
        let map = self.map.read();
        let mut out = Vec::new();
        for (k, v) in map.iter() {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
        let tmp = self.dir.join("standin.snapshot.tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join("standin.snapshot"))?;
        Ok(())
    }
}

fn take(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let rest = &b[4..];
    Some((rest.get(..len)?, &rest[len..]))
}
