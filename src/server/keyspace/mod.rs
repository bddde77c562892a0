//! TEMPORARY placeholder for the `keyspace` branch, only so that dispatch can
//! be tested before it lands: an in-memory map with a handful of commands and
//! the promised interface. Replaced wholesale by the real keyspace at merge.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::config::FsyncPolicy;
use crate::error::Result;
use crate::protocol::Reply;

#[derive(Clone, Debug, Default)]
pub struct KeyspaceOptions {
    pub fsync: FsyncPolicy,
}

#[derive(Clone, Debug, Default)]
pub struct KeyspaceInfo {
    pub keys: u64,
    pub expires: u64,
    pub keyspace_hits: u64,
    pub keyspace_misses: u64,
    pub expired_keys: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Keyspace {
    map: Arc<Mutex<BTreeMap<Bytes, Bytes>>>,
    fsync: Arc<Mutex<FsyncPolicy>>,
}

impl Keyspace {
    pub fn open(_dir: &Path, opts: KeyspaceOptions) -> Result<Keyspace> {
        let k = Keyspace::default();
        *k.fsync.lock() = opts.fsync;
        Ok(k)
    }

    pub async fn execute(&self, args: &[Bytes]) -> Reply {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        let mut map = self.map.lock();
        match name.as_str() {
            "get" => map
                .get(&args[1])
                .cloned()
                .map(Reply::Bulk)
                .unwrap_or(Reply::Null),
            "set" => {
                map.insert(args[1].clone(), args[2].clone());
                Reply::OK
            }
            "del" => Reply::Integer(
                args[1..]
                    .iter()
                    .filter(|k| map.remove(*k).is_some())
                    .count() as i64,
            ),
            "dbsize" => Reply::Integer(map.len() as i64),
            "flushall" | "flushdb" => {
                map.clear();
                Reply::OK
            }
            _ => Reply::err(format!("placeholder keyspace does not implement '{name}'")),
        }
    }

    pub fn spawn_background(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async {})
    }

    pub fn info(&self) -> KeyspaceInfo {
        KeyspaceInfo {
            keys: self.map.lock().len() as u64,
            ..Default::default()
        }
    }

    pub fn close(&self) -> Result<()> {
        Ok(())
    }

    pub fn set_fsync(&self, policy: FsyncPolicy) -> Result<()> {
        *self.fsync.lock() = policy;
        Ok(())
    }
}
