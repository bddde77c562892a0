//! Shared helpers of the `server_*` tests: an in-process server on
//! 127.0.0.1:0 running on its own thread and runtime, so tests can use
//! blocking clients (the `redis` crate's sync API, raw `TcpStream`s), and a
//! small RESP reader for raw-socket tests.

#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use ringkv::config::Config;
use ringkv::server::{Server, ShutdownHandle};

/// A server running on its own thread; shut down (gracefully) on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    handle: ShutdownHandle,
    thread: Option<JoinHandle<ringkv::Result<()>>>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A server with the default configuration in a fresh directory.
    pub fn start() -> TestServer {
        Self::with_config(|_| {})
    }

    /// A server in a fresh directory, configured by `f`.
    pub fn with_config(f: impl FnOnce(&mut Config)) -> TestServer {
        let tmp = tempfile::tempdir().expect("create temp dir");
        let mut config = test_config(tmp.path());
        f(&mut config);
        let mut s = Self::start_with(config);
        s._tmp = Some(tmp);
        s
    }

    /// A server with exactly `config` (the caller owns its directory).
    pub fn start_with(config: Config) -> TestServer {
        let dir = config.dir.clone();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let server = match Server::bind(config).await {
                    Ok(s) => s,
                    Err(e) => {
                        let msg = e.to_string();
                        let _ = tx.send(Err(msg));
                        return Err(e);
                    }
                };
                let _ = tx.send(Ok((server.local_addr(), server.shutdown_handle())));
                server.run().await
            })
        });
        let (addr, handle) = rx
            .recv()
            .expect("server thread died")
            .unwrap_or_else(|e| panic!("server failed to start: {e}"));
        TestServer {
            addr,
            dir,
            handle,
            thread: Some(thread),
            _tmp: None,
        }
    }

    /// A RESP2 client of the `redis` crate.
    pub fn client(&self) -> redis::Connection {
        self.client_url(&format!("redis://{}/", self.addr))
    }

    /// A RESP3 client of the `redis` crate.
    pub fn client3(&self) -> redis::Connection {
        self.client_url(&format!("redis://{}/?protocol=resp3", self.addr))
    }

    pub fn client_url(&self, url: &str) -> redis::Connection {
        let c = redis::Client::open(url).expect("client url");
        let conn = c
            .get_connection_with_timeout(Duration::from_secs(10))
            .expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(30))).ok();
        conn
    }

    /// A raw socket with a read timeout.
    pub fn raw(&self) -> Raw {
        Raw::connect(self.addr)
    }

    /// Shuts down gracefully and returns what `Server::run` returned.
    pub fn stop(mut self) -> ringkv::Result<()> {
        self.handle.shutdown();
        self.join()
    }

    /// Waits for the server to stop by itself (e.g. after SHUTDOWN).
    pub fn join(&mut self) -> ringkv::Result<()> {
        match self.thread.take() {
            Some(t) => t.join().expect("server thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The configuration tests start from: a free port, data in `dir`.
pub fn test_config(dir: &Path) -> Config {
    Config {
        port: 0,
        dir: dir.to_path_buf(),
        ..Config::default()
    }
}

/// A RESP value as the tests see it.
#[derive(Clone, Debug, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Resp>),
    Map(Vec<(Resp, Resp)>),
    Other(String),
}

impl Resp {
    pub fn bulk(s: &str) -> Resp {
        Resp::Bulk(s.as_bytes().to_vec())
    }
}

/// A raw client socket: write bytes, read RESP replies.
pub struct Raw {
    pub reader: BufReader<TcpStream>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        s.set_nodelay(true).ok();
        Raw {
            reader: BufReader::new(s),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    /// Sends one command as a multibulk request.
    pub fn cmd(&mut self, args: &[&[u8]]) -> io::Result<()> {
        self.send(&multibulk(args))
    }

    pub fn read(&mut self) -> io::Result<Resp> {
        read_resp(&mut self.reader)
    }

    /// Sends a command and reads its reply.
    pub fn call(&mut self, args: &[&str]) -> Resp {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        self.cmd(&a).expect("send");
        self.read().expect("reply")
    }

    /// True if the server closed the connection (EOF) within the timeout.
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0))
            || matches!(self.reader.read(&mut b), Err(ref e) if e.kind() == io::ErrorKind::ConnectionReset)
    }
}

/// Encodes a multibulk request.
pub fn multibulk(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "line without CRLF",
        ));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads one RESP2/RESP3 value.
pub fn read_resp(r: &mut impl BufRead) -> io::Result<Resp> {
    let line = read_line(r)?;
    let (kind, rest) = line.split_at(1);
    let int = |s: &str| {
        s.parse::<i64>()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    };
    Ok(match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Int(int(rest)?),
        "_" => Resp::Nil,
        "$" | "=" => {
            let n = int(rest)?;
            if n < 0 {
                return Ok(Resp::Nil);
            }
            let mut buf = vec![0u8; n as usize + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(n as usize);
            Resp::Bulk(buf)
        }
        "*" | "~" | ">" => {
            let n = int(rest)?;
            if n < 0 {
                return Ok(Resp::Nil);
            }
            Resp::Array((0..n).map(|_| read_resp(r)).collect::<io::Result<_>>()?)
        }
        "%" => {
            let n = int(rest)?;
            let mut pairs = Vec::with_capacity(n as usize);
            for _ in 0..n {
                pairs.push((read_resp(r)?, read_resp(r)?));
            }
            Resp::Map(pairs)
        }
        _ => Resp::Other(line.clone()),
    })
}
