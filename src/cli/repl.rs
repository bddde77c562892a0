//! The interactive loop: prompt, history, completion and hints, helpers
//! (`:resolve`, `:siblings`, `:help`), and sibling display after `GET`.
//!
//! The pieces that decide (how a reply is shown, what the user picked when
//! resolving) are plain functions taking a [`Session`] and an output, so they
//! are tested against an in-test server without a terminal.

use std::borrow::Cow;
use std::io::Write;
use std::path::PathBuf;

use bytes::Bytes;
use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::{Hint, Hinter};
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};

use super::commands::CommandTable;
use super::format::{format_tty, repr};
use super::{print_reply, CliArgs, Session};
use crate::client::Value;
use crate::protocol::split_args;

/// The REPL's own commands: name, arguments, what it does.
pub const HELPERS: &[(&str, &str, &str)] = &[
    (":help", "", "list these helpers"),
    (
        ":resolve",
        "<key>",
        "show the key's values, pick one by number or type a new one, then RESOLVE",
    ),
    (
        ":siblings",
        "<key>",
        "show the key's values with their causal context (VCLOCK TEXT)",
    ),
];

const HISTORY_FILE: &str = ".ringkv_cli_history";

/// Run the REPL until `quit`, `exit`, Ctrl-D or Ctrl-C. Returns `true`.
pub fn run(session: &mut Session, args: &CliArgs, raw: bool) -> bool {
    if let Err(e) = session.connect() {
        eprintln!("{}", session.connect_error(&e));
    }
    let table = fetch_command_table(session);
    let mut editor = match Editor::<ReplHelper, DefaultHistory>::new() {
        Ok(editor) => editor,
        Err(e) => {
            eprintln!("ringkv-cli: cannot open the terminal: {e}");
            return false;
        }
    };
    editor.set_helper(Some(ReplHelper {
        table: table.clone(),
    }));
    let history = history_path();
    if let Some(path) = &history {
        // A missing history file is the first run, not an error.
        let _ = editor.load_history(path);
    }
    let mut stdout = std::io::stdout();
    loop {
        let prompt = if session.is_connected() {
            format!("{}:{}> ", args.host, args.port)
        } else {
            "not connected> ".to_string()
        };
        let line = match editor.readline(&prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted | ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("ringkv-cli: {e}");
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let Ok(words) = split_args(line.as_bytes()) else {
            println!("Invalid argument(s)");
            continue;
        };
        if !is_sensitive(&words) {
            let _ = editor.add_history_entry(line.as_str());
        }
        let first = String::from_utf8_lossy(&words[0]).to_ascii_lowercase();
        match first.as_str() {
            "quit" | "exit" => break,
            "clear" => print!("\x1b[H\x1b[2J"),
            "help" | ":help" if words.len() == 1 => print_helpers(&mut stdout),
            "help" => {
                let names: Vec<String> = words[1..]
                    .iter()
                    .map(|w| String::from_utf8_lossy(w).into_owned())
                    .collect();
                match table.help(&names) {
                    Some(text) => println!("{text}"),
                    None => println!("No help for {}", names.join(" ")),
                }
            }
            ":resolve" | ":siblings" if words.len() != 2 => println!("usage: {first} <key>"),
            ":resolve" => {
                let mut ask = |question: &str| editor.readline(question).ok();
                resolve(session, &words[1], &mut ask, &mut stdout);
            }
            ":siblings" => show_siblings(session, &words[1], &mut stdout),
            other if other.starts_with(':') => {
                println!("unknown helper {other}; :help lists them")
            }
            _ => run_interactive(session, &words, raw, &mut stdout),
        }
        let _ = stdout.flush();
    }
    if let Some(path) = &history {
        if let Err(e) = editor.save_history(path) {
            eprintln!(
                "ringkv-cli: could not save history to {}: {e}",
                path.display()
            );
        }
    }
    true
}

fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(HISTORY_FILE))
}

/// Lines that carry a password stay out of the history file, as in
/// redis-cli.
fn is_sensitive(words: &[Bytes]) -> bool {
    let word = |i: usize| {
        words
            .get(i)
            .map(|w| String::from_utf8_lossy(w).to_ascii_lowercase())
    };
    match word(0).as_deref() {
        Some("auth") => true,
        Some("hello") => words.iter().any(|w| w.eq_ignore_ascii_case(b"auth")),
        Some("config") => word(1).as_deref() == Some("set"),
        Some("acl") => word(1).as_deref() == Some("setuser"),
        _ => false,
    }
}

fn print_helpers(out: &mut dyn Write) {
    let _ = writeln!(
        out,
        "ringkv-cli helpers (server commands work as in redis-cli):"
    );
    let rows = HELPERS
        .iter()
        .map(|(name, args, what)| (format!("{name} {args}"), *what))
        .chain([
            ("help <command>".to_string(), "usage of a server command"),
            ("quit".to_string(), "leave (also exit, Ctrl-D)"),
        ]);
    for (usage, what) in rows {
        let _ = writeln!(out, "  {usage:<16} {what}");
    }
}

/// The command table: the server's `COMMAND DOCS` if it answers, over the
/// built-in table.
pub fn fetch_command_table(session: &mut Session) -> CommandTable {
    if !session.is_connected() {
        return CommandTable::builtin();
    }
    match session.send(&["COMMAND", "DOCS"]) {
        Ok(docs) if !docs.is_error() => CommandTable::with_server_docs(&docs),
        _ => CommandTable::builtin(),
    }
}

/// Run a server command typed at the prompt and print its reply; after a
/// `GET` that answered siblings, print their causal context too.
pub fn run_interactive(session: &mut Session, words: &[Bytes], raw: bool, out: &mut dyn Write) {
    let started = std::time::Instant::now();
    match session.send(words) {
        Ok(value) => {
            let _ = print_reply(words, &value, raw, out);
            let elapsed = started.elapsed();
            // As redis-cli: slow commands say how long they took.
            if !raw && elapsed.as_millis() >= 500 {
                let _ = writeln!(out, "({:.2}s)", elapsed.as_secs_f64());
            }
            for push in session.take_pushes() {
                let _ = print_reply(&[], &push, raw, out);
            }
            let is_get = words.len() == 2 && words[0].eq_ignore_ascii_case(b"get");
            if is_get && matches!(value, Value::Array(_)) {
                describe_conflict(session, &words[1], out);
            }
        }
        Err(e) => {
            let _ = writeln!(out, "{}", session.connect_error(&e));
        }
    }
}

/// Under a `GET` that returned siblings: the key's clock and how to resolve.
fn describe_conflict(session: &mut Session, key: &Bytes, out: &mut dyn Write) {
    let mut shown_key = String::new();
    repr(key, &mut shown_key);
    let clock = session.send(&[&b"VCLOCK"[..], key, b"TEXT"]);
    let _ = writeln!(
        out,
        "(siblings) {shown_key} has concurrent values; causal context:"
    );
    if let Ok(clock) = clock.as_ref() {
        for line in format_tty(clock).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    let _ = writeln!(
        out,
        "(siblings) pick or write the value with :resolve {}",
        String::from_utf8_lossy(key)
    );
}

/// `:siblings key`: the values and the clock, from `VCLOCK key TEXT` and
/// `VCLOCK key WITHVALUES`.
pub fn show_siblings(session: &mut Session, key: &Bytes, out: &mut dyn Write) {
    match read_versions(session, key) {
        Ok(Some(versions)) => {
            let _ = write!(
                out,
                "{}",
                format_tty(&Value::Array(versions.values.clone()))
            );
            if let Ok(clock) = session.send(&[&b"VCLOCK"[..], key, b"TEXT"]) {
                let _ = writeln!(out, "causal context:");
                for line in format_tty(&clock).lines() {
                    let _ = writeln!(out, "  {line}");
                }
            }
        }
        Ok(None) => {
            let _ = writeln!(out, "(nil)");
        }
        Err(text) => {
            let _ = writeln!(out, "{text}");
        }
    }
}

/// A key's current values and the context that covers them, from one read.
#[derive(Clone, Debug, PartialEq)]
pub struct Versions {
    /// The opaque causal context.
    pub context: Bytes,
    /// The live values (siblings when more than one).
    pub values: Vec<Value>,
}

/// `VCLOCK key WITHVALUES` -> `[context, [value, ...]]`. `Ok(None)`: the key
/// was never written. `Err`: the text to show.
pub fn read_versions(session: &mut Session, key: &Bytes) -> Result<Option<Versions>, String> {
    let reply = session
        .send(&[&b"VCLOCK"[..], key, b"WITHVALUES"])
        .map_err(|e| session.connect_error(&e))?;
    match reply {
        Value::Nil => Ok(None),
        Value::Error(e) => Err(format!("(error) {e}")),
        Value::Array(items) => match items.as_slice() {
            [Value::Bulk(context), Value::Array(values)] => Ok(Some(Versions {
                context: context.clone(),
                values: values.clone(),
            })),
            [Value::Bulk(context), Value::Nil] => Ok(Some(Versions {
                context: context.clone(),
                values: Vec::new(),
            })),
            _ => Err(format!(
                "unexpected VCLOCK WITHVALUES reply:\n{}",
                format_tty(&Value::Array(items))
            )),
        },
        other => Err(format!(
            "unexpected VCLOCK WITHVALUES reply:\n{}",
            format_tty(&other)
        )),
    }
}

/// What the user answered to "pick or type".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Keep sibling number `n` (0-based).
    Sibling(usize),
    /// Write this new value.
    NewValue(Bytes),
    /// Do nothing.
    Cancel,
    /// Not understood; the text says why.
    Invalid(String),
}

/// Read the answer: a bare number picks a sibling (1-based); anything else
/// is a value in command-line quoting (`"2"` writes the string 2, `"a b"` a
/// value with a space); an empty answer cancels.
pub fn parse_choice(input: &str, siblings: usize) -> Choice {
    let input = input.trim();
    if input.is_empty() {
        return Choice::Cancel;
    }
    if input.bytes().all(|b| b.is_ascii_digit()) {
        return match input.parse::<usize>() {
            Ok(n) if (1..=siblings).contains(&n) => Choice::Sibling(n - 1),
            _ => Choice::Invalid(format!(
                "no sibling {input} (1 to {siblings}); to write the number itself, quote it: \"{input}\""
            )),
        };
    }
    match split_args(input.as_bytes()) {
        Ok(args) if args.len() == 1 => Choice::NewValue(args[0].clone()),
        Ok(_) => Choice::Invalid("type one value; quote it if it has spaces".into()),
        Err(_) => Choice::Invalid("unbalanced quotes".into()),
    }
}

/// `:resolve key`: show the siblings, ask, then `RESOLVE key context value`.
/// `ask` shows a question and returns the answer (`None`: the user gave up).
pub fn resolve(
    session: &mut Session,
    key: &Bytes,
    ask: &mut dyn FnMut(&str) -> Option<String>,
    out: &mut dyn Write,
) {
    let versions = match read_versions(session, key) {
        Ok(Some(versions)) => versions,
        Ok(None) => {
            let _ = writeln!(out, "(nil) the key has no versions to resolve");
            return;
        }
        Err(text) => {
            let _ = writeln!(out, "{text}");
            return;
        }
    };
    let count = versions.values.len();
    let _ = writeln!(out, "{count} value(s):");
    if count > 0 {
        let _ = write!(
            out,
            "{}",
            format_tty(&Value::Array(versions.values.clone()))
        );
    }
    let question = if count > 0 {
        format!("pick 1-{count}, or type a new value (empty cancels)> ")
    } else {
        "type the new value (empty cancels)> ".to_string()
    };
    let value = loop {
        let Some(answer) = ask(&question) else {
            return;
        };
        match parse_choice(&answer, count) {
            Choice::Sibling(i) => match versions.values[i].as_bytes() {
                Some(bytes) => break Bytes::copy_from_slice(bytes),
                None => {
                    let _ = writeln!(out, "sibling {} is not a string value", i + 1);
                }
            },
            Choice::NewValue(v) => break v,
            Choice::Cancel => {
                let _ = writeln!(out, "cancelled");
                return;
            }
            Choice::Invalid(why) => {
                let _ = writeln!(out, "{why}");
            }
        }
    };
    match session.send(&[&b"RESOLVE"[..], key, &versions.context, &value]) {
        Ok(reply) => {
            let _ = write!(out, "{}", format_tty(&reply));
        }
        Err(e) => {
            let _ = writeln!(out, "{}", session.connect_error(&e));
        }
    }
}

/// rustyline glue: completion, hints (greyed, never inserted by the
/// right-arrow key, since they are placeholders, not text to type).
struct ReplHelper {
    table: CommandTable,
}

/// A hint shown after the cursor.
struct ArgHint(String);

impl Hint for ArgHint {
    fn display(&self) -> &str {
        &self.0
    }

    fn completion(&self) -> Option<&str> {
        None
    }
}

impl Completer for ReplHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(self.table.complete(&line[..pos]))
    }
}

impl Hinter for ReplHelper {
    type Hint = ArgHint;

    fn hint(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> Option<ArgHint> {
        if pos < line.len() {
            return None;
        }
        self.table.hint(line).map(ArgHint)
    }
}

impl Highlighter for ReplHelper {
    fn highlight_hint<'h>(&self, hint: &'h str) -> Cow<'h, str> {
        Cow::Owned(format!("\x1b[90m{hint}\x1b[0m"))
    }
}

impl Validator for ReplHelper {}

impl Helper for ReplHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_picks_a_sibling_and_anything_else_is_a_value() {
        assert_eq!(parse_choice("2", 3), Choice::Sibling(1));
        assert_eq!(parse_choice(" 1 ", 3), Choice::Sibling(0));
        assert!(matches!(parse_choice("4", 3), Choice::Invalid(_)));
        assert!(matches!(parse_choice("0", 3), Choice::Invalid(_)));
        assert_eq!(parse_choice("\"2\"", 3), Choice::NewValue(Bytes::from("2")));
        assert_eq!(
            parse_choice("merged", 3),
            Choice::NewValue(Bytes::from("merged"))
        );
        assert_eq!(
            parse_choice("\"a b\"", 3),
            Choice::NewValue(Bytes::from("a b"))
        );
        assert!(matches!(parse_choice("a b", 3), Choice::Invalid(_)));
        assert!(matches!(parse_choice("\"a", 3), Choice::Invalid(_)));
        assert_eq!(parse_choice("", 3), Choice::Cancel);
    }

    #[test]
    fn password_lines_stay_out_of_history() {
        let words = |s: &str| split_args(s.as_bytes()).unwrap();
        assert!(is_sensitive(&words("AUTH secret")));
        assert!(is_sensitive(&words("hello 3 auth default secret")));
        assert!(is_sensitive(&words("config set requirepass x")));
        assert!(!is_sensitive(&words("GET auth")));
        assert!(!is_sensitive(&words("hello 3")));
    }
}
