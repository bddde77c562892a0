//! Non-interactive mode and the REPL's helpers against a tiny in-test server.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::repl::{resolve, run_interactive, show_siblings};
use super::*;
use crate::client::fake_server;
use crate::protocol::Reply;

/// A server on its own runtime (the session has its own, single-threaded).
fn serve<F>(answer: F) -> (tokio::runtime::Runtime, u16)
where
    F: Fn(&[Bytes]) -> Reply + Send + Sync + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let port = rt.block_on(fake_server::start(answer));
    (rt, port)
}

fn session(port: u16) -> Session {
    Session::new(ConnectOptions::new("127.0.0.1", port)).unwrap()
}

fn text(args: &[Bytes], i: usize) -> String {
    args.get(i)
        .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
        .unwrap_or_default()
}

/// A key `k` with two siblings; RESOLVE calls are recorded.
fn conflicted_store(
    resolved: Arc<Mutex<Vec<Vec<Bytes>>>>,
) -> impl Fn(&[Bytes]) -> Reply + Send + Sync + 'static {
    move |args: &[Bytes]| match (text(args, 0).as_str(), text(args, 2).as_str()) {
        ("GET", _) if args[1] == "k" => Reply::Array(vec![Reply::bulk("red"), Reply::bulk("blue")]),
        ("GET", _) => Reply::bulk("plain"),
        ("VCLOCK", "WITHVALUES") if args[1] == "k" => Reply::Array(vec![
            Reply::bulk("CTX1"),
            Reply::Array(vec![Reply::bulk("red"), Reply::bulk("blue")]),
        ]),
        ("VCLOCK", "WITHVALUES") => Reply::NullArray,
        ("VCLOCK", "TEXT") => Reply::Array(vec![Reply::bulk("n1:2"), Reply::bulk("n2:1")]),
        ("RESOLVE", _) => {
            resolved.lock().unwrap().push(args.to_vec());
            Reply::OK
        }
        ("SET", _) => Reply::OK,
        ("INCR", _) => Reply::Integer(7),
        _ => Reply::err(format!(
            "unknown command '{}'",
            String::from_utf8_lossy(&args[0])
        )),
    }
}

fn output_of(f: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut out = Vec::new();
    f(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn one_command_prints_its_reply_as_redis_cli_does() {
    let (_rt, port) = serve(conflicted_store(Arc::default()));
    let mut s = session(port);
    let tty = output_of(|out| {
        assert!(run_command(
            &mut s,
            &[Bytes::from("GET"), Bytes::from("x")],
            false,
            out
        ))
    });
    assert_eq!(tty, "\"plain\"\n");
    let raw = output_of(|out| {
        assert!(run_command(
            &mut s,
            &[Bytes::from("GET"), Bytes::from("k")],
            true,
            out
        ))
    });
    assert_eq!(raw, "red\nblue\n");
    let err = output_of(|out| assert!(run_command(&mut s, &[Bytes::from("NOPE")], false, out)));
    assert_eq!(err, "(error) ERR unknown command 'NOPE'\n");
}

#[test]
fn commands_on_stdin_run_one_per_line_with_quoting() {
    let (_rt, port) = serve(conflicted_store(Arc::default()));
    let mut s = session(port);
    let input = b"SET k \"a b\"\n\nINCR n\nSET 'unbalanced\nGET x\n";
    let out = output_of(|out| assert!(run_lines(&mut s, &input[..], true, out)));
    assert_eq!(out, "OK\n7\nInvalid argument(s)\nplain\n");
}

#[test]
fn an_unreachable_server_fails_without_output() {
    // Bind then drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut s = session(port);
    let out = output_of(|out| assert!(!run_command(&mut s, &[Bytes::from("PING")], false, out)));
    assert_eq!(out, "");
}

#[test]
fn get_of_a_conflicted_key_shows_the_siblings_and_their_clock() {
    let (_rt, port) = serve(conflicted_store(Arc::default()));
    let mut s = session(port);
    let out = output_of(|out| {
        run_interactive(&mut s, &[Bytes::from("get"), Bytes::from("k")], false, out)
    });
    assert_eq!(
        out,
        "1) \"red\"\n2) \"blue\"\n\
         (siblings) \"k\" has concurrent values; causal context:\n  1) \"n1:2\"\n  2) \"n2:1\"\n\
         (siblings) pick or write the value with :resolve k\n"
    );
    // A plain value gets no sibling note.
    let out = output_of(|out| {
        run_interactive(&mut s, &[Bytes::from("GET"), Bytes::from("x")], false, out)
    });
    assert_eq!(out, "\"plain\"\n");
}

#[test]
fn resolve_by_number_sends_the_chosen_sibling_with_the_context_it_read() {
    let resolved = Arc::new(Mutex::new(Vec::new()));
    let (_rt, port) = serve(conflicted_store(Arc::clone(&resolved)));
    let mut s = session(port);
    let mut answers = vec!["9".to_string(), "2".to_string()].into_iter();
    let out = output_of(|out| resolve(&mut s, &Bytes::from("k"), &mut |_| answers.next(), out));
    assert!(
        out.contains("2 value(s):\n1) \"red\"\n2) \"blue\"\n"),
        "{out}"
    );
    assert!(out.contains("no sibling 9"), "{out}");
    assert!(out.ends_with("OK\n"), "{out}");
    assert_eq!(
        *resolved.lock().unwrap(),
        vec![vec![
            Bytes::from("RESOLVE"),
            Bytes::from("k"),
            Bytes::from("CTX1"),
            Bytes::from("blue")
        ]]
    );
}

#[test]
fn resolve_with_a_typed_value_writes_that_value() {
    let resolved = Arc::new(Mutex::new(Vec::new()));
    let (_rt, port) = serve(conflicted_store(Arc::clone(&resolved)));
    let mut s = session(port);
    let mut answers = vec!["\"purple haze\"".to_string()].into_iter();
    output_of(|out| resolve(&mut s, &Bytes::from("k"), &mut |_| answers.next(), out));
    assert_eq!(resolved.lock().unwrap()[0][3], Bytes::from("purple haze"));
}

#[test]
fn resolve_cancels_on_an_empty_answer_and_on_a_missing_key() {
    let resolved = Arc::new(Mutex::new(Vec::new()));
    let (_rt, port) = serve(conflicted_store(Arc::clone(&resolved)));
    let mut s = session(port);
    let out =
        output_of(|out| resolve(&mut s, &Bytes::from("k"), &mut |_| Some(String::new()), out));
    assert!(out.ends_with("cancelled\n"));
    let out = output_of(|out| {
        resolve(
            &mut s,
            &Bytes::from("missing"),
            &mut |_| Some("1".into()),
            out,
        )
    });
    assert_eq!(out, "(nil) the key has no versions to resolve\n");
    assert!(resolved.lock().unwrap().is_empty());
}

#[test]
fn siblings_helper_shows_values_and_clock() {
    let (_rt, port) = serve(conflicted_store(Arc::default()));
    let mut s = session(port);
    let out = output_of(|out| show_siblings(&mut s, &Bytes::from("k"), out));
    assert_eq!(
        out,
        "1) \"red\"\n2) \"blue\"\ncausal context:\n  1) \"n1:2\"\n  2) \"n2:1\"\n"
    );
}

#[test]
fn flags_parse_like_redis_cli() {
    let args = CliArgs::try_parse_from([
        "ringkv-cli",
        "-h",
        "db.example",
        "-p",
        "7001",
        "-a",
        "pw",
        "-3",
        "SET",
        "k",
        "-1",
    ])
    .unwrap();
    assert_eq!((args.host.as_str(), args.port), ("db.example", 7001));
    assert_eq!(args.password.as_deref(), Some("pw"));
    assert!(args.resp3);
    assert_eq!(args.command, ["SET", "k", "-1"]);
    let opts = args.connect_options();
    assert!(opts.resp3 && opts.password.is_some());
}
