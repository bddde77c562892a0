//! `ringkv-cli`: the command-line client, a `redis-cli` work-alike.
//!
//! What it does, as `redis-cli` does it:
//! - `ringkv-cli` on a terminal: an interactive REPL (rustyline) with a
//!   history file (`~/.ringkv_cli_history`; `AUTH` lines are not saved), tab
//!   completion of command and subcommand names, and greyed argument hints
//!   taken from the server's `COMMAND DOCS` (see [`commands`]).
//! - `ringkv-cli GET k`: run one command, print the reply, exit. `-x` takes
//!   the last argument from stdin.
//! - Commands on stdin when stdin is not a terminal: one per line, split with
//!   Redis' quoting rules ([`split_args`](crate::protocol::split_args)).
//! - Replies printed exactly as `redis-cli` 7 prints them ([`format`](mod@format)): the
//!   human form on a terminal, the raw form when stdout is not one (`--raw`
//!   and `--no-raw` force either).
//! - `-h host -p port -a password [--user name]` (the password may come from
//!   `RINGKV_CLI_AUTH` instead, as redis-cli's `REDISCLI_AUTH`), `-3`/`--resp3`
//!   for RESP3.
//!   The exit status is 0 when every command got a reply, error replies
//!   included (as `redis-cli`), and 1 when the server could not be reached.
//!
//! How it differs from `redis-cli`:
//! - The default port is ringkv's 7000, and `-h` is the host, so help is
//!   `--help` only.
//! - Siblings are shown for what they are: when `GET key` answers an array
//!   in the REPL, the key is in conflict (DESIGN.md §3), and the REPL also
//!   fetches `VCLOCK key TEXT` and prints the siblings' causal context under
//!   the values, with a pointer to `:resolve`.
//! - Helper commands start with `:` so they never shadow a server command
//!   (redis-cli uses `:` for `:set hints`-style preferences, which we lack):
//!   `:resolve key` reads `VCLOCK key WITHVALUES` (values and context from one
//!   read, so the context covers exactly the values shown), lets the user pick
//!   a sibling by number or type a new value, and sends `RESOLVE key context
//!   value`; `:siblings key` shows a key's values and clock; `:help` lists them.
//! - No cluster-mode redirects (ringkv has none), no `--latency`, `--bigkeys`,
//!   `-r` repeat or `MONITOR`/`SUBSCRIBE` streaming modes.

pub mod commands;
pub mod format;
pub mod repl;

use std::io::{BufRead, IsTerminal, Read, Write};
use std::process::ExitCode;

use bytes::Bytes;
use clap::Parser;

use crate::client::{Client, ConnectOptions, Value};
use crate::error::{Error, Result};

/// Command-line flags, named as `redis-cli` names them.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "ringkv-cli",
    version,
    about = "Command-line client for ringkv (speaks RESP, like redis-cli)",
    disable_help_flag = true
)]
pub struct CliArgs {
    /// Server host.
    #[arg(short = 'h', long = "host", default_value = "127.0.0.1")]
    pub host: String,
    /// Server port.
    #[arg(short = 'p', long = "port", default_value_t = 7000)]
    pub port: u16,
    /// Password for AUTH (or the RINGKV_CLI_AUTH environment variable).
    #[arg(
        short = 'a',
        long = "pass",
        env = "RINGKV_CLI_AUTH",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// User name for AUTH.
    #[arg(long = "user")]
    pub user: Option<String>,
    /// Speak RESP3 (HELLO 3).
    #[arg(short = '3', long = "resp3")]
    pub resp3: bool,
    /// Raw output even on a terminal.
    #[arg(long = "raw")]
    pub raw: bool,
    /// Human output even when stdout is not a terminal.
    #[arg(long = "no-raw", conflicts_with = "raw")]
    pub no_raw: bool,
    /// Read the last argument of the command from stdin.
    #[arg(short = 'x')]
    pub stdin_last_arg: bool,
    /// Print help.
    #[arg(long = "help", action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// A command to run instead of the REPL.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

impl CliArgs {
    /// Connection options these flags describe.
    pub fn connect_options(&self) -> ConnectOptions {
        let mut opts = ConnectOptions::new(self.host.clone(), self.port);
        opts.password = self.password.clone();
        opts.user = self.user.clone();
        opts.resp3 = self.resp3;
        opts
    }
}

/// The binary's whole life: parse flags, pick a mode, run it.
pub fn main() -> ExitCode {
    let args = CliArgs::parse();
    if args.password.is_some() && std::env::var_os("RINGKV_CLI_AUTH").is_none() {
        // The same warning redis-cli gives: the password shows in `ps`.
        eprintln!("Warning: Using a password with '-a' option on the command line interface may not be safe.");
    }
    let raw = if args.raw {
        true
    } else if args.no_raw {
        false
    } else {
        !std::io::stdout().is_terminal()
    };
    let mut session = match Session::new(args.connect_options()) {
        Ok(session) => session,
        Err(e) => {
            eprintln!("ringkv-cli: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let ok = if !args.command.is_empty() {
        let mut command: Vec<Bytes> = args
            .command
            .iter()
            .map(|a| Bytes::from(a.clone()))
            .collect();
        if args.stdin_last_arg {
            let mut last = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut last) {
                eprintln!("ringkv-cli: reading stdin: {e}");
                return ExitCode::FAILURE;
            }
            command.push(Bytes::from(last));
        }
        run_command(&mut session, &command, raw, &mut out)
    } else if !std::io::stdin().is_terminal() {
        run_lines(&mut session, std::io::stdin().lock(), raw, &mut out)
    } else {
        drop(out);
        repl::run(&mut session, &args, raw)
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A connection that is (re)made on demand, with the runtime that drives it.
/// The REPL is synchronous (rustyline blocks on the terminal); each command
/// runs to completion on this single-threaded runtime.
pub struct Session {
    runtime: tokio::runtime::Runtime,
    opts: ConnectOptions,
    client: Option<Client>,
}

impl Session {
    /// A session for `opts`; it connects at its first command.
    pub fn new(opts: ConnectOptions) -> Result<Session> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Session {
            runtime,
            opts,
            client: None,
        })
    }

    /// The options this session connects with.
    pub fn options(&self) -> &ConnectOptions {
        &self.opts
    }

    /// Whether a connection is open.
    pub fn is_connected(&self) -> bool {
        self.client.is_some()
    }

    /// Connect now if not connected.
    pub fn connect(&mut self) -> Result<()> {
        if self.client.is_none() {
            let client = self.runtime.block_on(Client::connect_with(&self.opts))?;
            self.client = Some(client);
        }
        Ok(())
    }

    /// Send one command and wait for its reply, connecting first if needed.
    /// After a connection failure the connection is dropped, and the next
    /// command connects again.
    pub fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Value> {
        self.connect()?;
        let Some(client) = self.client.as_mut() else {
            return Err(Error::Closed("connection"));
        };
        let result = self.runtime.block_on(client.send(args));
        if result.is_err() {
            self.client = None;
        }
        result
    }

    /// RESP3 push messages that arrived since the last call.
    pub fn take_pushes(&mut self) -> Vec<Value> {
        self.client
            .as_mut()
            .map(Client::take_pushes)
            .unwrap_or_default()
    }

    /// The text redis-cli prints when it cannot reach the server.
    pub fn connect_error(&self, e: &Error) -> String {
        match e {
            Error::Refused {
                code: "NOPROTO", ..
            } => {
                format!(
                    "HELLO 3 failed (the server speaks RESP2 only?): {}",
                    e.to_resp()
                )
            }
            Error::Refused { .. } => format!("AUTH failed: {}", e.to_resp()),
            _ => format!(
                "Could not connect to ringkv at {}:{}: {}",
                self.opts.host,
                self.opts.port,
                match e {
                    // "Connection refused", without Rust's " (os error 111)".
                    Error::Io(io) => {
                        let text = io.to_string();
                        match text.find(" (os error") {
                            Some(at) => text[..at].to_string(),
                            None => text,
                        }
                    }
                    other => other.to_string(),
                }
            ),
        }
    }
}

/// Commands whose string reply is text meant to be read as is (`INFO`'s
/// sections, `CLIENT LIST`'s lines): redis-cli prints them raw in every
/// mode, and so do we. The `CLUSTER` ones beyond `NODES` and `INFO` are
/// ringkv's.
pub fn prints_raw_text(args: &[Bytes]) -> bool {
    let word = |i: usize| {
        args.get(i)
            .map(|w| String::from_utf8_lossy(w).to_ascii_lowercase())
            .unwrap_or_default()
    };
    let (first, second) = (word(0), word(1));
    match first.as_str() {
        "info" | "lolwut" => true,
        "debug" => matches!(
            second.as_str(),
            "htstats" | "htstats-key" | "client-eviction"
        ),
        "memory" => matches!(second.as_str(), "malloc-stats" | "doctor"),
        "client" => matches!(second.as_str(), "list" | "info"),
        "latency" => matches!(second.as_str(), "graph" | "doctor"),
        "cluster" => match second.as_str() {
            "nodes" | "info" | "partitions" | "ring" | "hints" => args.len() == 2,
            "preflist" => args.len() == 3,
            _ => false,
        },
        _ => false,
    }
}

/// Column names for the `CLUSTER` replies that are tables (one row per
/// node or target), shown aligned in the REPL's human mode.
fn table_headers(args: &[Bytes]) -> Option<&'static [&'static str]> {
    let is = |i: usize, w: &str| {
        args.get(i)
            .is_some_and(|a| a.eq_ignore_ascii_case(w.as_bytes()))
    };
    if !is(0, "cluster") {
        return None;
    }
    if is(1, "preflist") && args.len() == 3 {
        Some(&["NODE", "CLIENT", "PEER", "ROLE", "STATUS", "PARTITION"])
    } else if is(1, "hints") && args.len() == 2 {
        Some(&["TARGET", "HINTS", "BYTES", "STATUS"])
    } else {
        None
    }
}

/// Print the reply to `args` in the chosen output mode.
pub fn print_reply(
    args: &[Bytes],
    value: &Value,
    raw: bool,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    if let (false, Some(headers)) = (raw, table_headers(args)) {
        if let Some(table) = format::format_table(headers, value) {
            return out.write_all(table.as_bytes());
        }
    }
    if prints_raw_text(args) {
        // As redis-cli: the raw form without the newline raw mode adds (the
        // text ends in its own).
        let mut text = Vec::new();
        format::format_raw(value, &mut text);
        out.write_all(&text)
    } else if raw {
        out.write_all(&format::format_raw_line(value))
    } else {
        out.write_all(format::format_tty(value).as_bytes())
    }
}

/// Run one command and print its reply. `false` when the server could not
/// be reached (the message went to stderr).
pub fn run_command(session: &mut Session, args: &[Bytes], raw: bool, out: &mut dyn Write) -> bool {
    match session.send(args) {
        Ok(value) => print_reply(args, &value, raw, out)
            .and_then(|_| out.flush())
            .is_ok(),
        Err(e) => {
            eprintln!("{}", session.connect_error(&e));
            false
        }
    }
}

/// Run each line of `input` as a command (Redis' quoting rules), printing
/// each reply. Blank lines are skipped; a line with unbalanced quotes prints
/// `Invalid argument(s)` (on stdout, as redis-cli) and the rest still run. Stops at the first
/// connection failure and returns `false`.
pub fn run_lines(
    session: &mut Session,
    input: impl BufRead,
    raw: bool,
    out: &mut dyn Write,
) -> bool {
    for line in input.split(b'\n') {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                eprintln!("ringkv-cli: reading stdin: {e}");
                return false;
            }
        };
        match crate::protocol::split_args(&line) {
            Ok(args) if args.is_empty() => {}
            Ok(args) => {
                if !run_command(session, &args, raw, out) {
                    return false;
                }
            }
            Err(_) => {
                // On stdout, as redis-cli prints it.
                if writeln!(out, "Invalid argument(s)").is_err() {
                    return false;
                }
            }
        }
    }
    true
}

#[cfg(test)]
mod tests;
