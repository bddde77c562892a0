//! `ringkv-cli` as a script uses it: the built binary, run with a command or
//! with commands on stdin, against a small server started in the test
//! (ringkv's own request parser and reply encoder on 127.0.0.1:0). The real
//! server's black-box tests live with the server.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::thread;

use bytes::{Bytes, BytesMut};
use ringkv::protocol::{encode, ProtocolVersion, Reply, RequestParser};

/// Answers like a tiny key-value store with one conflicted key, `k`.
fn answer(args: &[Bytes]) -> Reply {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
    match name.as_str() {
        "PING" => Reply::Simple("PONG"),
        "GET" if args.get(1).is_some_and(|k| k == "k") => {
            Reply::Array(vec![Reply::bulk("red"), Reply::bulk("blue")])
        }
        "GET" => Reply::Null,
        "SET" => Reply::OK,
        "INCR" => Reply::Integer(1),
        "HELLO" => Reply::Map(vec![(Reply::bulk("proto"), Reply::Integer(3))]),
        _ => Reply::err(format!(
            "unknown command '{}'",
            String::from_utf8_lossy(&args[0])
        )),
    }
}

fn serve_connection(mut socket: TcpStream) {
    let mut parser = RequestParser::default();
    let mut input = BytesMut::new();
    let mut output = BytesMut::new();
    let mut proto = ProtocolVersion::Resp2;
    let mut chunk = [0u8; 4096];
    loop {
        while let Ok(Some(req)) = parser.parse(&mut input) {
            if req.name().eq_ignore_ascii_case(b"hello")
                && req.args().get(1).is_some_and(|v| v == "3")
            {
                proto = ProtocolVersion::Resp3;
            }
            encode(&answer(req.args()), proto, &mut output);
        }
        if !output.is_empty() {
            if socket.write_all(&output).is_err() {
                return;
            }
            output.clear();
        }
        match socket.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => input.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Start the server; it lives until the test process ends.
fn start_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local address").port();
    thread::spawn(move || {
        for socket in listener.incoming().flatten() {
            thread::spawn(move || serve_connection(socket));
        }
    });
    port
}

/// Run the CLI with `args` and `stdin`; stdout is a pipe, so raw output
/// applies unless the flags say otherwise.
fn run_cli(port: u16, args: &[&str], stdin: &str) -> (String, i32) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringkv-cli"))
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ringkv-cli");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("write stdin");
    }
    let output = child.wait_with_output().expect("ringkv-cli output");
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        output.status.code().unwrap_or(-1),
    )
}

#[test]
fn one_command_prints_raw_output_when_stdout_is_a_pipe() {
    let port = start_server();
    assert_eq!(run_cli(port, &["PING"], ""), ("PONG\n".to_string(), 0));
    assert_eq!(
        run_cli(port, &["GET", "k"], ""),
        ("red\nblue\n".to_string(), 0)
    );
    assert_eq!(
        run_cli(port, &["GET", "missing"], ""),
        ("\n".to_string(), 0)
    );
}

#[test]
fn no_raw_prints_what_a_terminal_would_show() {
    let port = start_server();
    assert_eq!(
        run_cli(port, &["--no-raw", "GET", "k"], ""),
        ("1) \"red\"\n2) \"blue\"\n".to_string(), 0)
    );
    assert_eq!(
        run_cli(port, &["--no-raw", "GET", "missing"], "").0,
        "(nil)\n"
    );
    assert_eq!(
        run_cli(port, &["--no-raw", "INCR", "n"], "").0,
        "(integer) 1\n"
    );
    assert_eq!(
        run_cli(port, &["--no-raw", "NOPE"], "").0,
        "(error) ERR unknown command 'NOPE'\n"
    );
    assert_eq!(
        run_cli(port, &["-3", "--no-raw", "HELLO", "3"], "").0,
        "1# \"proto\" => (integer) 3\n"
    );
}

#[test]
fn commands_on_stdin_run_in_order() {
    let port = start_server();
    let (out, code) = run_cli(port, &[], "SET k \"a b\"\nINCR n\n\nGET k\n");
    assert_eq!(out, "OK\n1\nred\nblue\n");
    assert_eq!(code, 0);
}

#[test]
fn an_unreachable_server_exits_with_status_1() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    assert_eq!(run_cli(port, &["PING"], ""), (String::new(), 1));
}
