//! A small async RESP client, used by the REPL (`ringkv-cli`), the tools and
//! the tests.
//!
//! One [`Client`] is one TCP connection. Commands are written as multibulk
//! requests ([`encode_command`]); replies are decoded by ringkv's
//! [`ValueDecoder`] into [`Value`], which keeps everything a server may send
//! (RESP3 push messages, big numbers, verbatim formats) with maps in the
//! order the server sent them. The decoder reads RESP2 and RESP3 alike, so
//! `HELLO 3` needs no switch on this side. (`redis-protocol`'s decoder was the
//! first choice; it shuffles RESP3 maps and cannot decode a set of arrays,
//! which Redis' own `COMMAND DOCS` sends; see [`crate::protocol::value`].)
//!
//! Pipelining: [`Client::pipeline`] writes a batch of commands in one write and
//! then reads their replies in order; [`Client::queue`], [`Client::flush`] and
//! [`Client::read_reply`] are the same in pieces, for callers that interleave.
//! RESP3 push messages (client tracking, pub/sub) never take a reply's place:
//! they are set aside for [`Client::take_pushes`].
//!
//! Why not the `redis` crate: the REPL must show every reply type exactly as
//! the server sent it (simple vs bulk strings, RESP3 doubles, verbatim text,
//! map order), and ringkv's own tools want a client whose failure modes are
//! ringkv's [`Error`]. The `redis` crate is still used by the black-box tests,
//! as a real third-party client.
//!
//! A server error reply (`-ERR ...`) is a [`Value::Error`], not an `Err`: it
//! is an answer. `Err` means the connection failed (I/O, the server closed it,
//! or bytes that are not RESP); after one, drop the client.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::protocol::{encode_command, ProtocolVersion, ValueDecoder};

pub use crate::protocol::Value;

/// How to connect: address, credentials, protocol.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `AUTH [user] password` after connecting (or inside `HELLO 3`).
    pub password: Option<String>,
    /// User name for `AUTH`; `None` means Redis' `default` user.
    pub user: Option<String>,
    /// Speak RESP3 (`HELLO 3`) instead of RESP2.
    pub resp3: bool,
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
    /// Give up waiting for a reply after this long (`Error::Timeout`; the
    /// connection is then unusable). `None`: wait as long as it takes.
    pub reply_timeout: Option<Duration>,
}

impl ConnectOptions {
    /// Options for `host:port`, RESP2, no password, a 5 s connect timeout, no
    /// reply timeout.
    pub fn new(host: impl Into<String>, port: u16) -> ConnectOptions {
        ConnectOptions {
            host: host.into(),
            port,
            password: None,
            user: None,
            resp3: false,
            connect_timeout: Duration::from_secs(5),
            reply_timeout: None,
        }
    }
}

/// Read buffer growth step; replies larger than this arrive over several
/// reads.
const READ_CHUNK: usize = 16 * 1024;

/// One connection to a RESP server.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    decoder: ValueDecoder,
    /// The protocol the server speaks to us, as far as we know.
    proto: ProtocolVersion,
    /// One entry per reply still owed, in order: the protocol a successful
    /// reply switches to (for `HELLO`).
    owed: VecDeque<Option<ProtocolVersion>>,
    /// RESP3 push messages that arrived between replies.
    pushes: VecDeque<Value>,
    reply_timeout: Option<Duration>,
}

impl Client {
    /// Connect to `host:port` speaking RESP2, without authentication.
    pub async fn connect(host: &str, port: u16) -> Result<Client> {
        Client::connect_with(&ConnectOptions::new(host, port)).await
    }

    /// Connect, then authenticate and switch protocol as `opts` says. A
    /// refused `AUTH` or `HELLO` is an [`Error::Refused`] carrying the
    /// server's error.
    pub async fn connect_with(opts: &ConnectOptions) -> Result<Client> {
        let addr = (opts.host.as_str(), opts.port);
        let stream = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                Error::Timeout(format!(
                    "connecting to {}:{} took over {:?}",
                    opts.host, opts.port, opts.connect_timeout
                ))
            })??;
        stream.set_nodelay(true)?;
        let mut client = Client {
            stream,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::with_capacity(1024),
            decoder: ValueDecoder::default(),
            proto: ProtocolVersion::Resp2,
            owed: VecDeque::new(),
            pushes: VecDeque::new(),
            reply_timeout: opts.reply_timeout,
        };
        let user = opts.user.as_deref().unwrap_or("default");
        let handshake: Option<Vec<&str>> = match (opts.resp3, opts.password.as_deref()) {
            (true, Some(pass)) => Some(vec!["HELLO", "3", "AUTH", user, pass]),
            (true, None) => Some(vec!["HELLO", "3"]),
            (false, Some(pass)) if opts.user.is_some() => Some(vec!["AUTH", user, pass]),
            (false, Some(pass)) => Some(vec!["AUTH", pass]),
            (false, None) => None,
        };
        if let Some(args) = handshake {
            if let Value::Error(e) = client.send(&args).await? {
                let (code, message) = split_error(&e);
                return Err(Error::Refused { code, message });
            }
        }
        Ok(client)
    }

    /// Connect, retrying every 50 ms until `within` has passed: for tests and
    /// tools that start a server and wait until it answers. Refusals (a wrong
    /// password) are returned at once; only connection failures are retried.
    pub async fn connect_retrying(opts: &ConnectOptions, within: Duration) -> Result<Client> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match Client::connect_with(opts).await {
                Err(Error::Io(_) | Error::Timeout(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// The protocol the server is speaking (RESP3 after a successful
    /// `HELLO 3`).
    pub fn protocol(&self) -> ProtocolVersion {
        self.proto
    }

    /// Send one command and wait for its reply.
    pub async fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Value> {
        self.queue(args);
        self.flush().await?;
        self.read_reply().await
    }

    /// Send every command in one write, then read all replies, in order.
    pub async fn pipeline<C, A>(&mut self, commands: &[C]) -> Result<Vec<Value>>
    where
        C: AsRef<[A]>,
        A: AsRef<[u8]>,
    {
        for command in commands {
            self.queue(command.as_ref());
        }
        self.flush().await?;
        let mut replies = Vec::with_capacity(commands.len());
        for _ in commands {
            replies.push(self.read_reply().await?);
        }
        Ok(replies)
    }

    /// Buffer a command without sending it.
    pub fn queue<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        encode_command(args, &mut self.write_buf);
        self.owed.push_back(hello_version(args));
    }

    /// Write every queued command.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.write_buf.is_empty() {
            self.stream.write_all(&self.write_buf).await?;
            self.write_buf.clear();
        }
        Ok(())
    }

    /// Read the reply to the oldest command not yet answered. RESP3 push
    /// messages that arrive in between are kept for
    /// [`take_pushes`](Self::take_pushes).
    pub async fn read_reply(&mut self) -> Result<Value> {
        loop {
            let decoded = self
                .decoder
                .decode(&mut self.read_buf)
                .map_err(|e| Error::invalid(format!("from server: {e}")))?;
            match decoded {
                Some(Value::Push(items)) => {
                    self.pushes.push_back(Value::Push(items));
                    continue;
                }
                Some(value) => {
                    if let Some(Some(version)) = self.owed.pop_front() {
                        if !value.is_error() {
                            self.proto = version;
                        }
                    }
                    return Ok(value);
                }
                None => {}
            }
            self.read_buf.reserve(READ_CHUNK);
            let read = self.stream.read_buf(&mut self.read_buf);
            let n = match self.reply_timeout {
                Some(limit) => tokio::time::timeout(limit, read)
                    .await
                    .map_err(|_| Error::Timeout(format!("no reply within {limit:?}")))??,
                None => read.await?,
            };
            if n == 0 {
                return Err(Error::Closed("connection"));
            }
        }
    }

    /// Push messages received so far (oldest first), emptying the store.
    pub fn take_pushes(&mut self) -> Vec<Value> {
        self.pushes.drain(..).collect()
    }

    /// Replies still owed for commands already flushed.
    pub fn pending(&self) -> usize {
        self.owed.len()
    }
}

/// The protocol a `HELLO <n>` command asks for, if `args` is one.
fn hello_version<A: AsRef<[u8]>>(args: &[A]) -> Option<ProtocolVersion> {
    let name = args.first()?.as_ref();
    if !name.eq_ignore_ascii_case(b"hello") {
        return None;
    }
    match args.get(1).map(|a| a.as_ref()) {
        Some(b"3") => Some(ProtocolVersion::Resp3),
        Some(b"2") => Some(ProtocolVersion::Resp2),
        _ => None,
    }
}

/// Split `WRONGPASS invalid username-password pair` into code and message.
fn split_error(line: &str) -> (&'static str, String) {
    let (code, message) = line.split_once(' ').unwrap_or((line, ""));
    let code = match code {
        "NOAUTH" => "NOAUTH",
        "WRONGPASS" => "WRONGPASS",
        "NOPROTO" => "NOPROTO",
        "NOPERM" => "NOPERM",
        _ => return ("ERR", line.strip_prefix("ERR ").unwrap_or(line).to_string()),
    };
    (code, message.to_string())
}

/// A tiny RESP server for tests: answers each request with `answer(args)`,
/// using ringkv's own parser and encoder, on 127.0.0.1 with a free port.
#[cfg(test)]
pub(crate) mod fake_server {
    use super::*;
    use crate::protocol::{encode, Reply, RequestParser};
    use bytes::Bytes;
    use std::sync::Arc;
    use tokio::net::TcpListener;

    /// Start serving; returns the port. Every connection starts in RESP2 and
    /// switches on `HELLO 3`. The server stops when the runtime does.
    pub(crate) async fn start<F>(answer: F) -> u16
    where
        F: Fn(&[Bytes]) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let answer = Arc::clone(&answer);
                tokio::spawn(async move {
                    let mut parser = RequestParser::default();
                    let mut input = BytesMut::new();
                    let mut output = BytesMut::new();
                    let mut proto = ProtocolVersion::Resp2;
                    loop {
                        match parser.parse(&mut input) {
                            Ok(Some(req)) => {
                                if let Some(v) = hello_version(req.args()) {
                                    proto = v;
                                }
                                encode(&answer(req.args()), proto, &mut output);
                                continue;
                            }
                            Ok(None) => {}
                            Err(e) => {
                                encode(&Reply::Error(e.to_resp()), proto, &mut output);
                                let _ = socket.write_all(&output).await;
                                return;
                            }
                        }
                        if !output.is_empty() {
                            if socket.write_all(&output).await.is_err() {
                                return;
                            }
                            output.clear();
                        }
                        match socket.read_buf(&mut input).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        port
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Reply;
    use bytes::Bytes;

    fn echo_server(args: &[Bytes]) -> Reply {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        match name.as_str() {
            "PING" => Reply::Simple("PONG"),
            "ECHO" => Reply::Bulk(args[1].clone()),
            "HELLO" if args.get(1).map(|a| &a[..]) == Some(b"4") => {
                Reply::Error("NOPROTO unsupported protocol version".into())
            }
            "HELLO" => Reply::Map(vec![
                (Reply::bulk("server"), Reply::bulk("fake")),
                (Reply::bulk("proto"), Reply::Integer(3)),
            ]),
            "AUTH" if args.last().map(|a| &a[..]) == Some(b"secret") => Reply::OK,
            "AUTH" => {
                Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
            }
            "NULL" => Reply::Null,
            "MIX" => Reply::Array(vec![
                Reply::Double(1.5),
                Reply::Boolean(true),
                Reply::Set(vec![Reply::Integer(1)]),
                Reply::Verbatim("hi".into()),
                Reply::NullArray,
            ]),
            _ => Reply::err(format!("unknown command '{name}'")),
        }
    }

    #[tokio::test]
    async fn send_returns_the_server_reply_and_errors_are_values() {
        let port = fake_server::start(echo_server).await;
        let mut c = Client::connect("127.0.0.1", port).await.unwrap();
        assert_eq!(
            c.send(&["PING"]).await.unwrap(),
            Value::Status("PONG".into())
        );
        assert_eq!(
            c.send(&["ECHO", "a b"]).await.unwrap(),
            Value::Bulk(Bytes::from("a b"))
        );
        assert_eq!(c.send(&["NULL"]).await.unwrap(), Value::Nil);
        assert!(c.send(&["NOPE"]).await.unwrap().is_error());
        assert_eq!(c.pending(), 0);
    }

    #[tokio::test]
    async fn a_pipeline_returns_every_reply_in_order() {
        let port = fake_server::start(echo_server).await;
        let mut c = Client::connect("127.0.0.1", port).await.unwrap();
        let commands: Vec<Vec<String>> = (0..1000)
            .map(|i| vec!["ECHO".into(), i.to_string()])
            .collect();
        let replies = c.pipeline(&commands).await.unwrap();
        assert_eq!(replies.len(), 1000);
        for (i, reply) in replies.iter().enumerate() {
            assert_eq!(reply.as_str(), Some(i.to_string().as_str()));
        }
    }

    #[tokio::test]
    async fn resp3_types_decode_after_hello_3() {
        let port = fake_server::start(echo_server).await;
        let mut opts = ConnectOptions::new("127.0.0.1", port);
        opts.resp3 = true;
        let mut c = Client::connect_with(&opts).await.unwrap();
        assert_eq!(c.protocol(), ProtocolVersion::Resp3);
        assert_eq!(
            c.send(&["MIX"]).await.unwrap(),
            Value::Array(vec![
                Value::Double(1.5),
                Value::Boolean(true),
                Value::Set(vec![Value::Integer(1)]),
                Value::Verbatim {
                    format: "txt".into(),
                    text: Bytes::from("hi")
                },
                Value::Nil,
            ])
        );
        // The same command in RESP2 comes back as RESP2 types.
        let mut c2 = Client::connect("127.0.0.1", port).await.unwrap();
        assert_eq!(
            c2.send(&["MIX"]).await.unwrap(),
            Value::Array(vec![
                Value::Bulk(Bytes::from("1.5")),
                Value::Integer(1),
                Value::Array(vec![Value::Integer(1)]),
                Value::Bulk(Bytes::from("hi")),
                Value::Nil,
            ])
        );
    }

    #[tokio::test]
    async fn a_hello_sent_by_hand_switches_the_decoder_and_a_refused_one_does_not_break_it() {
        let port = fake_server::start(echo_server).await;
        let mut c = Client::connect("127.0.0.1", port).await.unwrap();
        let hello = c.send(&["hello", "3"]).await.unwrap();
        assert_eq!(hello.to_pairs().map(|p| p.len()), Some(2));
        assert!(matches!(hello, Value::Map(_)));
        assert_eq!(c.send(&["NULL"]).await.unwrap(), Value::Nil);
        assert!(c.send(&["HELLO", "4"]).await.unwrap().is_error());
        assert_eq!(
            c.send(&["PING"]).await.unwrap(),
            Value::Status("PONG".into())
        );
    }

    #[tokio::test]
    async fn a_wrong_password_is_refused_at_connect() {
        let port = fake_server::start(echo_server).await;
        let mut opts = ConnectOptions::new("127.0.0.1", port);
        opts.password = Some("nope".into());
        match Client::connect_with(&opts).await {
            Err(Error::Refused { code, .. }) => assert_eq!(code, "WRONGPASS"),
            other => panic!("expected WRONGPASS, got {other:?}"),
        }
        opts.password = Some("secret".into());
        assert!(Client::connect_with(&opts).await.is_ok());
    }

    #[tokio::test]
    async fn push_messages_are_set_aside_and_do_not_take_a_replys_place() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 64];
            let _ = socket.read(&mut request).await;
            let invalidate_then_pong = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n+PONG\r\n";
            socket.write_all(invalidate_then_pong).await.unwrap();
            let _ = socket.read(&mut request).await;
        });
        let mut c = Client::connect("127.0.0.1", port).await.unwrap();
        assert_eq!(
            c.send(&["PING"]).await.unwrap(),
            Value::Status("PONG".into())
        );
        let pushes = c.take_pushes();
        assert_eq!(pushes.len(), 1);
        assert_eq!(pushes[0].as_array().map(|a| a.len()), Some(2));
        assert!(c.take_pushes().is_empty());
    }

    #[tokio::test]
    async fn a_silent_server_times_out_when_asked_to() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            // Accept and never answer.
            let (_socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let mut opts = ConnectOptions::new("127.0.0.1", port);
        opts.reply_timeout = Some(Duration::from_millis(100));
        let mut c = Client::connect_with(&opts).await.unwrap();
        assert!(matches!(c.send(&["PING"]).await, Err(Error::Timeout(_))));
    }

    #[tokio::test]
    async fn connect_retrying_waits_for_a_server_that_starts_late() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 64];
            let _ = socket.read(&mut request).await;
            socket.write_all(b"+PONG\r\n").await.unwrap();
        });
        let opts = ConnectOptions::new("127.0.0.1", port);
        let mut c = Client::connect_retrying(&opts, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            c.send(&["PING"]).await.unwrap(),
            Value::Status("PONG".into())
        );
        late.await.unwrap();
    }

    #[tokio::test]
    async fn a_closed_connection_is_an_error_not_a_hang() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            drop(socket);
        });
        let mut c = Client::connect("127.0.0.1", port).await.unwrap();
        assert!(matches!(
            c.send(&["PING"]).await,
            Err(Error::Closed(_)) | Err(Error::Io(_))
        ));
    }
}
