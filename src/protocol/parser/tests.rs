use super::*;
use crate::protocol::encode_command;
use proptest::prelude::*;

/// Feed `input` in the given chunk sizes (the last chunk takes the rest) and
/// collect every request, or the first error.
fn parse_chunked(input: &[u8], chunks: &[usize]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
    let mut parser = RequestParser::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    let mut sizes = chunks.iter().copied();
    while fed < input.len() {
        let n = sizes
            .next()
            .unwrap_or(input.len() - fed)
            .min(input.len() - fed);
        buf.extend_from_slice(&input[fed..fed + n]);
        fed += n;
        while let Some(req) = parser.parse(&mut buf)? {
            out.push(req.args().iter().map(|a| a.to_vec()).collect());
            parser.recycle(req);
        }
    }
    Ok(out)
}

fn parse_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
    parse_chunked(input, &[])
}

fn first_error(input: &[u8]) -> ProtocolError {
    match parse_all(input) {
        Err(e) => e,
        Ok(reqs) => panic!("expected an error, parsed {reqs:?}"),
    }
}

fn cmd(args: &[&str]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.as_bytes().to_vec()).collect()
}

const PIPELINES: &[&[u8]] = &[
    b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
    b"PING\r\nSET k \"a b\\x41\\n\"\r\n*1\r\n$4\r\nPING\r\nGET 'it\\'s'\n\r\n*0\r\n",
    b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n*-1\r\n  \r\nECHO \"\"\r\n*1\r\n$10\r\n0123\r\n6789\r\n",
];

#[test]
fn pipelines_parse_the_same_at_every_split_point() {
    for input in PIPELINES {
        let whole = parse_all(input).unwrap();
        assert!(!whole.is_empty());
        let one_byte_at_a_time = parse_chunked(input, &vec![1; input.len()]).unwrap();
        assert_eq!(one_byte_at_a_time, whole);
        for split in 0..=input.len() {
            assert_eq!(
                parse_chunked(input, &[split]).unwrap(),
                whole,
                "split at {split}"
            );
        }
    }
}

#[test]
fn a_pipeline_parses_to_the_expected_commands() {
    assert_eq!(
        parse_all(PIPELINES[0]).unwrap(),
        vec![cmd(&["SET", "k", "hello"]), cmd(&["GET", "k"])]
    );
    assert_eq!(
        parse_all(PIPELINES[1]).unwrap(),
        vec![
            cmd(&["PING"]),
            cmd(&["SET", "k", "a bA\n"]),
            cmd(&["PING"]),
            cmd(&["GET", "it's"]),
        ]
    );
    assert_eq!(
        parse_all(PIPELINES[2]).unwrap(),
        vec![
            cmd(&["ECHO", ""]),
            cmd(&["ECHO", ""]),
            cmd(&["0123\r\n6789"])
        ]
    );
}

#[test]
fn a_pipeline_of_100k_commands_is_answered_in_order() {
    let mut input = BytesMut::new();
    for i in 0..100_000u32 {
        if i % 2 == 0 {
            encode_command(
                &[&b"SET"[..], format!("key:{i}").as_bytes(), b"v"],
                &mut input,
            );
        } else {
            input.extend_from_slice(format!("GET key:{i}\r\n").as_bytes());
        }
    }
    let mut parser = RequestParser::default();
    let mut count = 0u32;
    while let Some(req) = parser.parse(&mut input).unwrap() {
        assert_eq!(req.args()[1], format!("key:{count}").as_bytes());
        assert_eq!(req.name(), if count % 2 == 0 { b"SET" } else { b"GET" });
        count += 1;
        parser.recycle(req);
    }
    assert_eq!(count, 100_000);
    assert!(input.is_empty());
    assert!(!parser.in_progress());
}

#[test]
fn every_error_has_redis_text() {
    let cases: &[(&[u8], &str)] = &[
        (b"*x\r\n", "ERR Protocol error: invalid multibulk length"),
        (b"*\r\n", "ERR Protocol error: invalid multibulk length"),
        (b"*01\r\n", "ERR Protocol error: invalid multibulk length"),
        (b"*1\r\n$-1\r\n", "ERR Protocol error: invalid bulk length"),
        (b"*1\r\n$+1\r\n", "ERR Protocol error: invalid bulk length"),
        (b"*1\r\n$\r\n", "ERR Protocol error: invalid bulk length"),
        (
            b"*1\r\nGET\r\n",
            "ERR Protocol error: expected '$', got 'G'",
        ),
        (
            b"SET k \"v\r\n",
            "ERR Protocol error: unbalanced quotes in request",
        ),
        (
            b"SET k 'v'x\r\n",
            "ERR Protocol error: unbalanced quotes in request",
        ),
    ];
    for (input, text) in cases {
        assert_eq!(first_error(input).to_resp(), *text, "input {input:?}");
    }
    let long_line = vec![b'a'; INLINE_MAX + 1];
    assert_eq!(
        first_error(&long_line).to_resp(),
        "ERR Protocol error: too big inline request"
    );
    let mut long_count = b"*".to_vec();
    long_count.extend(std::iter::repeat_n(b'1', INLINE_MAX + 1));
    assert_eq!(
        first_error(&long_count).to_resp(),
        "ERR Protocol error: too big mbulk count string"
    );
    let mut long_bulk = b"*1\r\n$".to_vec();
    long_bulk.extend(std::iter::repeat_n(b'1', INLINE_MAX + 1));
    assert_eq!(
        first_error(&long_bulk).to_resp(),
        "ERR Protocol error: too big bulk count string"
    );
}

#[test]
fn an_inline_line_of_exactly_the_limit_is_accepted_and_one_more_byte_is_not() {
    let mut line = b"ECHO ".to_vec();
    line.resize(INLINE_MAX, b'x');
    line.push(b'\n');
    assert_eq!(parse_all(&line).unwrap().len(), 1);
    let mut longer = b"ECHO ".to_vec();
    longer.resize(INLINE_MAX + 1, b'x');
    longer.push(b'\n');
    assert_eq!(first_error(&longer), ProtocolError::TooBigInline);
}

#[test]
fn huge_declared_lengths_are_rejected_before_any_payload_arrives() {
    assert_eq!(
        first_error(b"*99999999999\r\n"),
        ProtocolError::InvalidMultibulkLength
    );
    assert_eq!(
        first_error(b"*1048577\r\n"),
        ProtocolError::InvalidMultibulkLength
    );
    assert_eq!(
        first_error(b"*1\r\n$2147483648\r\n"),
        ProtocolError::InvalidBulkLength
    );
    assert_eq!(
        first_error(b"*1\r\n$99999999999999999999999\r\n"),
        ProtocolError::InvalidBulkLength
    );
}

#[test]
fn a_large_declared_count_reserves_only_a_small_argument_vector() {
    let mut parser = RequestParser::default();
    let mut buf = BytesMut::from(&b"*1048576\r\n$1\r\na\r\n"[..]);
    assert!(parser.parse(&mut buf).unwrap().is_none());
    assert!(parser.args.capacity() <= ARGV_PREALLOC_CAP);
    assert!(parser.in_progress());
}

#[test]
fn a_declared_bulk_within_the_limit_waits_for_its_bytes_without_allocating_them() {
    let mut parser = RequestParser::default();
    let mut buf = BytesMut::from(&b"*1\r\n$536870912\r\nabc"[..]);
    assert!(parser.parse(&mut buf).unwrap().is_none());
    // Only the bytes that arrived are held.
    assert_eq!(&buf[..], b"abc");
    assert_eq!(parser.bulk_bytes_wanted(&buf), 536_870_912 + 2 - 3);
}

#[test]
fn configured_limits_are_enforced() {
    let mut parser = RequestParser::new(Limits {
        max_bulk_len: 4,
        max_multibulk_len: 2,
        max_inline_len: 8,
    });
    let mut ok = BytesMut::from(&b"*2\r\n$4\r\nECHO\r\n$4\r\nabcd\r\n"[..]);
    assert!(parser.parse(&mut ok).unwrap().is_some());
    let mut too_many = BytesMut::from(&b"*3\r\n"[..]);
    assert_eq!(
        parser.parse(&mut too_many),
        Err(ProtocolError::InvalidMultibulkLength)
    );
    let mut parser = RequestParser::new(Limits {
        max_bulk_len: 4,
        max_multibulk_len: 2,
        max_inline_len: 8,
    });
    let mut too_long = BytesMut::from(&b"*1\r\n$5\r\n"[..]);
    assert_eq!(
        parser.parse(&mut too_long),
        Err(ProtocolError::InvalidBulkLength)
    );
}

#[test]
fn unauthenticated_clients_get_redis_7_tighter_limits() {
    let mut parser = RequestParser::default();
    parser.set_unauthenticated(true);
    let mut buf = BytesMut::from(&b"*11\r\n"[..]);
    assert_eq!(
        parser.parse(&mut buf),
        Err(ProtocolError::UnauthenticatedMultibulkLength)
    );
    let mut parser = RequestParser::default();
    parser.set_unauthenticated(true);
    let mut buf = BytesMut::from(&b"*2\r\n$4\r\nAUTH\r\n$2049\r\n"[..]);
    assert_eq!(
        parser.parse(&mut buf),
        Err(ProtocolError::UnauthenticatedBulkLength)
    );
    let mut parser = RequestParser::default();
    parser.set_unauthenticated(true);
    let mut buf = BytesMut::from(&b"*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\n"[..]);
    assert_eq!(parser.parse(&mut buf).unwrap().map(|r| r.len()), Some(2));
}

#[test]
fn nested_arrays_are_an_error_not_a_recursion() {
    let mut input = Vec::new();
    for _ in 0..100_000 {
        input.extend_from_slice(b"*1\r\n");
    }
    assert_eq!(first_error(&input), ProtocolError::ExpectedDollar(b'*'));
    assert_eq!(
        ProtocolError::ExpectedDollar(b'*').to_resp(),
        "ERR Protocol error: expected '$', got '*'"
    );
}

#[test]
fn empty_commands_are_skipped_without_a_reply() {
    assert_eq!(
        parse_all(b"*0\r\n*-1\r\n\r\n\n   \t \r\n").unwrap(),
        Vec::<Vec<Vec<u8>>>::new()
    );
    assert_eq!(parse_all(b"\r\nPING\r\n").unwrap(), vec![cmd(&["PING"])]);
}

#[test]
fn inline_quoting_follows_sdssplitargs() {
    let split = |s: &str| -> Result<Vec<String>, UnbalancedQuotes> {
        split_args(s.as_bytes()).map(|v| {
            v.iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect()
        })
    };
    assert_eq!(split("set  k\tv").unwrap(), ["set", "k", "v"]);
    assert_eq!(
        split(r#"set k "a\"b\\c\n\r\t""#).unwrap(),
        ["set", "k", "a\"b\\c\n\r\t"]
    );
    assert_eq!(split(r#""\x41\x4a\x4A\xzz""#).unwrap(), ["AJJxzz"]);
    assert_eq!(split(r#""\b\a\q""#).unwrap(), ["\u{8}\u{7}q"]);
    assert_eq!(split(r"'it\'s' 'a\nb'").unwrap(), ["it's", "a\\nb"]);
    assert_eq!(split(r#"ab"c d"  x"#).unwrap(), ["abc d", "x"]);
    assert_eq!(split(r#""" ''"#).unwrap(), ["", ""]);
    assert_eq!(split("").unwrap(), Vec::<String>::new());
    assert_eq!(split("\u{b}\u{c} a").unwrap(), ["a"]);
    assert_eq!(split(r#""abc"#), Err(UnbalancedQuotes));
    assert_eq!(split(r#""abc\"#), Err(UnbalancedQuotes));
    assert_eq!(split("'abc"), Err(UnbalancedQuotes));
    assert_eq!(split(r#""a"b"#), Err(UnbalancedQuotes));
    assert_eq!(split("'a'b"), Err(UnbalancedQuotes));
}

#[test]
fn inline_arguments_without_quotes_share_the_read_buffer() {
    let mut parser = RequestParser::default();
    let mut buf = BytesMut::from(&b"SET key value\r\n"[..]);
    let base = buf.as_ptr() as usize;
    let req = parser.parse(&mut buf).unwrap().unwrap();
    assert_eq!(req.args()[2].as_ptr() as usize, base + 8);
}

#[test]
fn multibulk_arguments_share_the_read_buffer() {
    let mut parser = RequestParser::default();
    let mut buf = BytesMut::from(&b"*1\r\n$4\r\nPING\r\n"[..]);
    let base = buf.as_ptr() as usize;
    let req = parser.parse(&mut buf).unwrap().unwrap();
    assert_eq!(req.args()[0].as_ptr() as usize, base + 8);
}

#[test]
fn a_partial_line_is_not_rescanned_from_its_start() {
    let mut parser = RequestParser::default();
    let mut buf = BytesMut::from(&b"ECHO aaaa"[..]);
    assert!(parser.parse(&mut buf).unwrap().is_none());
    assert_eq!(parser.scanned, 9);
    buf.extend_from_slice(b"bbb");
    assert!(parser.parse(&mut buf).unwrap().is_none());
    assert_eq!(parser.scanned, 12);
    buf.extend_from_slice(b"\r\n");
    assert_eq!(
        parser.parse(&mut buf).unwrap().unwrap().args()[1],
        &b"aaaabbb"[..]
    );
    assert_eq!(parser.scanned, 0);
}

#[test]
fn recycled_vectors_are_reused() {
    let mut parser = RequestParser::default();
    let mut buf = BytesMut::from(&b"PING\r\nPING\r\n"[..]);
    let first = parser.parse(&mut buf).unwrap().unwrap();
    let reused = first.args().as_ptr();
    parser.recycle(first);
    let second = parser.parse(&mut buf).unwrap().unwrap();
    assert_eq!(second.args().as_ptr(), reused);
}

#[test]
fn a_pipelined_batch_parsed_before_execution_reuses_vectors_too() {
    let mut parser = RequestParser::default();
    let batch = b"PING\r\n".repeat(8);
    let mut buf = BytesMut::from(&batch[..]);
    let first: Vec<Request> = std::iter::from_fn(|| parser.parse(&mut buf).unwrap()).collect();
    let used: Vec<*const Bytes> = first.iter().map(|r| r.args().as_ptr()).collect();
    for req in first {
        parser.recycle(req);
    }
    let mut buf = BytesMut::from(&batch[..]);
    let second: Vec<Request> = std::iter::from_fn(|| parser.parse(&mut buf).unwrap()).collect();
    assert_eq!(second.len(), 8);
    assert!(second.iter().all(|r| used.contains(&r.args().as_ptr())));
}

#[test]
fn redis_integers_are_strict() {
    assert_eq!(parse_redis_int(b"0"), Some(0));
    assert_eq!(parse_redis_int(b"-12"), Some(-12));
    assert_eq!(parse_redis_int(b"9223372036854775807"), Some(i64::MAX));
    assert_eq!(parse_redis_int(b"-9223372036854775808"), Some(i64::MIN));
    for bad in [
        &b""[..],
        b"-",
        b"-0",
        b"+1",
        b"01",
        b" 1",
        b"1 ",
        b"9223372036854775808",
        b"1a",
    ] {
        assert_eq!(parse_redis_int(bad), None, "{bad:?}");
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512), split in 0usize..512) {
        let _ = parse_chunked(&input, &[split]);
    }

    #[test]
    fn resp_like_bytes_parse_the_same_whole_and_bytewise(parts in proptest::collection::vec(
        prop_oneof![
            Just(&b"*"[..]), Just(&b"$"[..]), Just(&b"\r\n"[..]), Just(&b"1"[..]), Just(&b"3"[..]),
            Just(&b"-"[..]), Just(&b"\""[..]), Just(&b"'"[..]), Just(&b"\\"[..]), Just(&b"x"[..]), Just(&b" "[..]),
        ], 0..64)) {
        let input: Vec<u8> = parts.concat();
        let whole = parse_all(&input);
        let bytewise = parse_chunked(&input, &vec![1; input.len()]);
        // Splitting changes nothing, errors included, except that the
        // bytewise run may stop at the first error where the whole run did too.
        prop_assert_eq!(whole, bytewise);
    }

    #[test]
    fn encoded_commands_parse_back(
        cmds in proptest::collection::vec(
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6), 1..8),
        split in 0usize..2000,
    ) {
        let mut wire = BytesMut::new();
        for args in &cmds {
            encode_command(args, &mut wire);
        }
        prop_assert_eq!(parse_chunked(&wire, &[split]).unwrap(), cmds.clone());
        prop_assert_eq!(parse_chunked(&wire, &vec![1; wire.len()]).unwrap(), cmds);
    }
}
