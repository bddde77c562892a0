//! Commands the server answers itself, by family, and the command table.
//!
//! - [`table`]: every command with its arity, flags and docs.
//! - [`connection`]: PING, ECHO, QUIT, HELLO, AUTH, SELECT, CLIENT ...
//! - [`introspection`]: COMMAND (COUNT, DOCS, INFO, LIST).
//! - [`info`]: INFO and its sections.
//! - [`config`]: CONFIG GET/SET/RESETSTAT and the settings that can change
//!   while running ([`config::LiveConfig`]).
//! - [`server`]: TIME, SHUTDOWN.
//!
//! Data commands (GET, SET, ...) are executed by the keyspace.

pub mod config;
pub mod connection;
pub mod info;
pub mod introspection;
pub mod server;
pub mod table;

use bytes::Bytes;

use super::dispatch::{Ctx, Flow};
use crate::protocol::Reply;
use table::ServerCmd;

/// Runs a connection or server command whose arity was checked.
pub(crate) fn run(cmd: ServerCmd, ctx: &mut Ctx<'_>, args: &[Bytes]) -> (Option<Reply>, Flow) {
    use ServerCmd::*;
    let reply = match cmd {
        Ping => connection::ping(args),
        Echo => Reply::Bulk(args[1].clone()),
        Quit => return (Some(Reply::OK), Flow::Close),
        Hello => connection::hello(ctx, args),
        Auth => connection::auth(ctx, args),
        Select => connection::select(args),
        ClientSetName => connection::client_setname(ctx, args),
        ClientGetName => connection::client_getname(ctx),
        ClientId => Reply::Integer(ctx.session.id.0 as i64),
        ClientSetInfo => connection::client_setinfo(ctx, args),
        ClientList => connection::client_list(ctx, args),
        ClientInfo => {
            let now = std::time::Instant::now();
            ctx.client.touch(now, "client|info");
            Reply::Verbatim(ctx.client.describe(now))
        }
        ClientHelp => help(connection::CLIENT_HELP),
        Command => introspection::command_all(),
        CommandCount => Reply::Integer(table::COMMANDS.len() as i64),
        CommandDocs => introspection::command_docs(args),
        CommandInfo => introspection::command_info(args),
        CommandList => introspection::command_list(args),
        CommandHelp => help(introspection::COMMAND_HELP),
        Info => info::info(ctx, args),
        ConfigGet => config::config_get(ctx, args),
        ConfigSet => config::config_set(ctx, args),
        ConfigResetStat => {
            ctx.shared.stats.reset();
            Reply::OK
        }
        ConfigHelp => help(config::CONFIG_HELP),
        Time => server::time(),
        Shutdown => return server::shutdown(ctx, args),
        Cluster(c) => crate::server::cluster_node::command(c, ctx, args),
    };
    (Some(reply), Flow::Continue)
}

/// A `HELP` subcommand's reply: one simple string per line.
fn help(lines: &'static [&'static str]) -> Reply {
    Reply::Array(lines.iter().map(|l| Reply::Simple(l)).collect())
}

/// Parses a decimal i64 argument as Redis' `string2ll` does.
pub(crate) use crate::protocol::parse_redis_int as parse_i64;
