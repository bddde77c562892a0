//! Command dispatch: find the command in the table, check its arity and the
//! client's authentication, and run it (connection and server commands here,
//! data commands in the keyspace).
//!
//! The checks come in Redis' order (unknown command, unknown subcommand,
//! arity, then `NOAUTH`) with Redis 7's error texts, so clients and their test
//! suites see the errors they expect. Nothing here allocates on the path of a
//! well-formed command: the lookup lowercases into a stack buffer, and the
//! only work per command is a hash probe and a few comparisons.

use bytes::Bytes;

use super::clients::{ClientId, ClientInfo};
use super::cluster_node::ClusterCmd;
use super::commands::{self, table};
use super::Shared;
use crate::cluster::coordinator::Origin;
use crate::protocol::ProtocolVersion;
use crate::protocol::Reply;
use crate::storage::SeqNo;

/// What the connection does after a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Go on with the next command.
    Continue,
    /// Send what was encoded so far, then close (`QUIT`, protocol errors,
    /// `SHUTDOWN`).
    Close,
}

/// The per-connection state commands read and change.
#[derive(Debug)]
pub struct Session {
    pub id: ClientId,
    /// RESP2 until `HELLO 3`.
    pub protocol: ProtocolVersion,
    /// False until `AUTH` succeeds when a password is required.
    pub authenticated: bool,
    /// The parser's bulk length limit, tracking `proto-max-bulk-len`.
    pub max_bulk_len: u64,
}

impl Session {
    /// A fresh connection's session.
    pub fn new(id: ClientId, password_required: bool) -> Self {
        Session {
            id,
            protocol: ProtocolVersion::Resp2,
            authenticated: !password_required,
            max_bulk_len: 0,
        }
    }

    /// Whether `CONFIG SET proto-max-bulk-len` changed the limit since the
    /// last call; updates `max_bulk_len`.
    pub fn max_bulk_len_changed(&mut self, shared: &Shared) -> bool {
        let now = shared.live.proto_max_bulk_len();
        let changed = now != self.max_bulk_len;
        self.max_bulk_len = now;
        changed
    }
}

/// What a connection or server command sees.
pub struct Ctx<'a> {
    pub shared: &'a Shared,
    pub session: &'a mut Session,
    pub client: &'a ClientInfo,
}

/// What executing one command produced.
#[derive(Debug)]
pub struct Outcome {
    /// The reply; None when the connection closes without one (`SHUTDOWN`).
    pub reply: Option<Reply>,
    pub flow: Flow,
    /// The command's full name for `CLIENT LIST` (empty if unknown).
    pub name: &'static str,
    /// Under `fsync always`, the write that must be durable before the reply
    /// is sent (the connection waits once per batch).
    pub wrote: Option<SeqNo>,
}

impl Outcome {
    fn reply(reply: Reply, name: &'static str) -> Outcome {
        Outcome {
            reply: Some(reply),
            flow: Flow::Continue,
            name,
            wrote: None,
        }
    }
}

/// Executes one command.
pub async fn execute(
    shared: &Shared,
    session: &mut Session,
    client: &ClientInfo,
    args: &[Bytes],
) -> Outcome {
    let Some(mut spec) = table::lookup(&args[0]) else {
        return Outcome::reply(unknown_command(args), "");
    };
    if !spec.subcommands.is_empty() && args.len() >= 2 {
        match spec.subcommand(&args[1]) {
            Some(sub) => spec = sub,
            None => {
                let reply = Reply::err(format!(
                    "unknown subcommand '{}'. Try {} HELP.",
                    sanitize(&args[1], 128),
                    spec.name.to_ascii_uppercase()
                ));
                return Outcome::reply(reply, spec.name);
            }
        }
    }
    if !spec.arity_ok(args.len()) {
        let reply = Reply::err(format!(
            "wrong number of arguments for '{}' command",
            spec.name
        ));
        return Outcome::reply(reply, spec.name);
    }
    if !session.authenticated && !spec.has(table::flag::NO_AUTH) {
        return Outcome::reply(
            Reply::Error("NOAUTH Authentication required.".into()),
            spec.name,
        );
    }
    match spec.handler {
        table::Handler::Data => {
            let (reply, wrote) = shared
                .data
                .execute(args, session.protocol, Origin::Client)
                .await;
            Outcome {
                reply: Some(reply),
                flow: Flow::Continue,
                name: spec.name,
                wrote,
            }
        }
        // Waits for its anti-entropy sessions, so it cannot run with the
        // synchronous server commands below.
        table::Handler::Server(table::ServerCmd::Cluster(ClusterCmd::Repair)) => {
            let reply = shared.anti_entropy.repair_command(args).await;
            Outcome::reply(reply, spec.name)
        }
        table::Handler::Server(cmd) => {
            let mut ctx = Ctx {
                shared,
                session,
                client,
            };
            let (reply, flow) = commands::run(cmd, &mut ctx, args);
            Outcome {
                reply,
                flow,
                name: spec.name,
                wrote: None,
            }
        }
        // A container's arity requires a subcommand, so the lookup above
        // found one or answered; reaching here means the table is wrong.
        table::Handler::Container => Outcome::reply(
            Reply::err(format!("unknown subcommand for '{}'", spec.name)),
            spec.name,
        ),
    }
}

/// Redis 7's unknown-command error: the name and the first arguments, quoted,
/// each clipped so the list stays under 128 bytes, newlines made spaces.
fn unknown_command(args: &[Bytes]) -> Reply {
    let mut listed = String::new();
    for arg in &args[1..] {
        if listed.len() >= 128 {
            break;
        }
        let room = 128 - listed.len();
        listed.push('\'');
        listed.push_str(&sanitize(arg, room));
        listed.push_str("' ");
    }
    Reply::err(format!(
        "unknown command '{}', with args beginning with: {}",
        sanitize(&args[0], 128),
        listed
    ))
}

/// At most `max` bytes of `arg` as text, with CR/LF replaced by spaces so the
/// error stays one line.
fn sanitize(arg: &[u8], max: usize) -> String {
    let clipped = &arg[..arg.len().min(max)];
    String::from_utf8_lossy(clipped)
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<Bytes> {
        a.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    #[test]
    fn unknown_command_text_matches_redis_7() {
        assert_eq!(
            unknown_command(&args(&["foo", "a", "b"])),
            Reply::Error("ERR unknown command 'foo', with args beginning with: 'a' 'b' ".into())
        );
        assert_eq!(
            unknown_command(&args(&["foo"])),
            Reply::Error("ERR unknown command 'foo', with args beginning with: ".into())
        );
        let long = "x".repeat(300);
        let Reply::Error(e) = unknown_command(&args(&["foo", &long, "next"])) else {
            panic!("not an error")
        };
        assert!(!e.contains("next"), "arguments stop after 128 bytes");
        let Reply::Error(e) = unknown_command(&args(&["fo\r\no"])) else {
            panic!("not an error")
        };
        assert!(e.contains("'fo  o'"));
    }
}
