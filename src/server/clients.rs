//! The registry of connected clients, for `CLIENT LIST`, `INFO clients` and
//! `maxclients`.
//!
//! Each connection owns its state; what other connections may read (name,
//! library, protocol, last command, idle time) lives in a shared
//! [`ClientInfo`]. The registry's lock is taken on connect, disconnect and
//! `CLIENT LIST`, never per command. A connection refreshes its `last command`
//! and `last interaction` once per batch of pipelined commands.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use ahash::AHashMap;
use parking_lot::Mutex;

/// A client connection's id: unique for the life of the server, never reused,
/// starting at 1 (as `CLIENT ID` numbers them in Redis).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);

/// What other connections may see of a connection.
#[derive(Debug)]
pub struct ClientInfo {
    pub id: ClientId,
    pub addr: SocketAddr,
    pub laddr: SocketAddr,
    pub fd: i32,
    pub created: Instant,
    /// Milliseconds since `created` of the last command batch.
    last_interaction_ms: AtomicU64,
    resp: AtomicU8,
    meta: Mutex<ClientMeta>,
}

/// The settable, textual part of a client's info.
#[derive(Clone, Debug, Default)]
pub struct ClientMeta {
    pub name: String,
    pub lib_name: String,
    pub lib_ver: String,
    /// Full name of the last command (`client|list`), as CLIENT LIST shows it.
    pub last_cmd: &'static str,
}

impl ClientInfo {
    /// Records a batch of commands whose last one was `cmd`.
    pub fn touch(&self, now: Instant, cmd: &'static str) {
        let ms = now.duration_since(self.created).as_millis() as u64;
        self.last_interaction_ms.store(ms, Relaxed);
        self.meta.lock().last_cmd = cmd;
    }

    /// The protocol version the client speaks (2 or 3).
    pub fn set_resp(&self, v: u8) {
        self.resp.store(v, Relaxed);
    }

    /// Runs `f` on the textual info (to set the name or library).
    pub fn with_meta<R>(&self, f: impl FnOnce(&mut ClientMeta) -> R) -> R {
        f(&mut self.meta.lock())
    }

    /// One line of `CLIENT LIST` / the reply of `CLIENT INFO`, with Redis'
    /// field names and order for the fields ringkv has (`\n`-terminated).
    pub fn describe(&self, now: Instant) -> String {
        let meta = self.meta.lock().clone();
        let age = now.duration_since(self.created).as_secs();
        let idle_ms = (now.duration_since(self.created).as_millis() as u64)
            .saturating_sub(self.last_interaction_ms.load(Relaxed));
        format!(
            "id={} addr={} laddr={} fd={} name={} age={} idle={} flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 watch=0 events=r cmd={} user=default redir=-1 resp={} lib-name={} lib-ver={}\n",
            self.id.0,
            self.addr,
            self.laddr,
            self.fd,
            meta.name,
            age,
            idle_ms / 1000,
            if meta.last_cmd.is_empty() { "NULL" } else { meta.last_cmd },
            self.resp.load(Relaxed),
            meta.lib_name,
            meta.lib_ver,
        )
    }
}

/// Every connected client.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    next_id: AtomicU64,
    clients: Mutex<AHashMap<ClientId, Arc<ClientInfo>>>,
}

/// Removes its client from the registry when the connection ends.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<ClientRegistry>,
    pub info: Arc<ClientInfo>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.clients.lock().remove(&self.info.id);
    }
}

impl ClientRegistry {
    /// Registers a new connection unless `maxclients` are already connected.
    pub fn register(
        self: &Arc<Self>,
        addr: SocketAddr,
        laddr: SocketAddr,
        fd: i32,
        maxclients: usize,
    ) -> Option<Registration> {
        let mut clients = self.clients.lock();
        if clients.len() >= maxclients {
            return None;
        }
        let id = ClientId(self.next_id.fetch_add(1, Relaxed) + 1);
        let info = Arc::new(ClientInfo {
            id,
            addr,
            laddr,
            fd,
            created: Instant::now(),
            last_interaction_ms: AtomicU64::new(0),
            resp: AtomicU8::new(2),
            meta: Mutex::new(ClientMeta::default()),
        });
        clients.insert(id, info.clone());
        Some(Registration {
            registry: self.clone(),
            info,
        })
    }

    /// How many clients are connected.
    pub fn len(&self) -> usize {
        self.clients.lock().len()
    }

    /// Whether no client is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every connected client, by id.
    pub fn snapshot(&self) -> Vec<Arc<ClientInfo>> {
        let mut all: Vec<_> = self.clients.lock().values().cloned().collect();
        all.sort_by_key(|c| c.id);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxclients_refuses_the_extra_client_and_ids_are_never_reused() {
        let reg = Arc::new(ClientRegistry::default());
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let c1 = reg.register(a, a, 3, 2).unwrap();
        let c2 = reg.register(a, a, 4, 2).unwrap();
        assert!(reg.register(a, a, 5, 2).is_none());
        assert_eq!((c1.info.id.0, c2.info.id.0), (1, 2));
        drop(c1);
        assert_eq!(reg.len(), 1);
        let c3 = reg.register(a, a, 5, 2).unwrap();
        assert_eq!(c3.info.id.0, 3, "a refused attempt does not consume an id");
    }

    #[test]
    fn describe_shows_name_and_protocol() {
        let reg = Arc::new(ClientRegistry::default());
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let c = reg.register(a, a, 3, 10).unwrap();
        c.info.with_meta(|m| m.name = "worker".into());
        c.info.set_resp(3);
        c.info.touch(Instant::now(), "client|list");
        let line = c.info.describe(Instant::now());
        assert!(line.starts_with("id=1 addr=127.0.0.1:1 "));
        assert!(line.contains(" name=worker "));
        assert!(line.contains(" cmd=client|list "));
        assert!(line.contains(" resp=3 "));
        assert!(line.ends_with('\n'));
    }
}
