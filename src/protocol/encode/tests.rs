use super::*;
use bytes::Bytes;
use proptest::prelude::*;
use redis_protocol::resp2::types::OwnedFrame as Frame2;
use redis_protocol::resp3::types::{OwnedFrame as Frame3, VerbatimStringFormat};

fn wire(reply: &Reply, proto: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(reply, proto, &mut out);
    out.to_vec()
}

fn double_text(d: f64) -> String {
    let mut buf = [0u8; DOUBLE_MAX_LEN];
    let n = format_double(d, &mut buf);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// What `reply` must decode to in RESP2, built independently of the encoder.
fn expected2(reply: &Reply) -> Frame2 {
    match reply {
        Reply::Simple(s) => Frame2::SimpleString(s.as_bytes().to_vec()),
        Reply::Status(s) => Frame2::SimpleString(s.as_bytes().to_vec()),
        Reply::Error(s) => Frame2::Error(s.clone()),
        Reply::Integer(n) => Frame2::Integer(*n),
        Reply::Bulk(b) => Frame2::BulkString(b.to_vec()),
        Reply::Null | Reply::NullArray => Frame2::Null,
        Reply::Array(items) | Reply::Set(items) => {
            Frame2::Array(items.iter().map(expected2).collect())
        }
        Reply::Map(pairs) => Frame2::Array(
            pairs
                .iter()
                .flat_map(|(k, v)| [expected2(k), expected2(v)])
                .collect(),
        ),
        Reply::Double(d) => Frame2::BulkString(double_text(*d).into_bytes()),
        Reply::Boolean(b) => Frame2::Integer(i64::from(*b)),
        Reply::Verbatim(t) => Frame2::BulkString(t.as_bytes().to_vec()),
        Reply::Raw(_) => unreachable!("the generators make no pre-encoded replies"),
    }
}

/// What `reply` must decode to in RESP3.
fn expected3(reply: &Reply) -> Frame3 {
    match reply {
        Reply::Simple(s) => Frame3::SimpleString {
            data: s.as_bytes().to_vec(),
            attributes: None,
        },
        Reply::Status(s) => Frame3::SimpleString {
            data: s.as_bytes().to_vec(),
            attributes: None,
        },
        Reply::Error(s) => Frame3::SimpleError {
            data: s.clone(),
            attributes: None,
        },
        Reply::Integer(n) => Frame3::Number {
            data: *n,
            attributes: None,
        },
        Reply::Bulk(b) => Frame3::BlobString {
            data: b.to_vec(),
            attributes: None,
        },
        Reply::Null | Reply::NullArray => Frame3::Null,
        Reply::Array(items) => Frame3::Array {
            data: items.iter().map(expected3).collect(),
            attributes: None,
        },
        Reply::Set(items) => Frame3::Set {
            data: items.iter().map(expected3).collect(),
            attributes: None,
        },
        Reply::Map(pairs) => Frame3::Map {
            data: pairs
                .iter()
                .map(|(k, v)| (expected3(k), expected3(v)))
                .collect(),
            attributes: None,
        },
        Reply::Double(d) => Frame3::Double {
            data: *d,
            attributes: None,
        },
        Reply::Boolean(b) => Frame3::Boolean {
            data: *b,
            attributes: None,
        },
        Reply::Verbatim(t) => Frame3::VerbatimString {
            data: t.as_bytes().to_vec(),
            format: VerbatimStringFormat::Text,
            attributes: None,
        },
        Reply::Raw(_) => unreachable!("the generators make no pre-encoded replies"),
    }
}

fn assert_round_trips(reply: &Reply) {
    let bytes2 = wire(reply, ProtocolVersion::Resp2);
    let (frame, used) = redis_protocol::resp2::decode::decode(&bytes2)
        .expect("valid RESP2")
        .expect("complete RESP2 frame");
    assert_eq!(used, bytes2.len());
    assert_eq!(frame, expected2(reply), "RESP2 of {reply:?}");

    let bytes3 = wire(reply, ProtocolVersion::Resp3);
    let (frame, used) = redis_protocol::resp3::decode::complete::decode(&bytes3)
        .expect("valid RESP3")
        .expect("complete RESP3 frame");
    assert_eq!(used, bytes3.len());
    assert_eq!(frame, expected3(reply), "RESP3 of {reply:?}");
}

#[test]
fn each_variant_has_the_documented_bytes() {
    use ProtocolVersion::{Resp2, Resp3};
    let cases: Vec<(Reply, &[u8], &[u8])> = vec![
        (Reply::OK, b"+OK\r\n", b"+OK\r\n"),
        (
            Reply::Status("string".into()),
            b"+string\r\n",
            b"+string\r\n",
        ),
        (
            Reply::err("syntax error"),
            b"-ERR syntax error\r\n",
            b"-ERR syntax error\r\n",
        ),
        (Reply::Integer(-42), b":-42\r\n", b":-42\r\n"),
        (
            Reply::Integer(i64::MIN),
            b":-9223372036854775808\r\n",
            b":-9223372036854775808\r\n",
        ),
        (Reply::bulk("hi"), b"$2\r\nhi\r\n", b"$2\r\nhi\r\n"),
        (Reply::bulk(""), b"$0\r\n\r\n", b"$0\r\n\r\n"),
        (Reply::Null, b"$-1\r\n", b"_\r\n"),
        (Reply::NullArray, b"*-1\r\n", b"_\r\n"),
        (Reply::Array(vec![]), b"*0\r\n", b"*0\r\n"),
        (
            Reply::Array(vec![Reply::bulk("a"), Reply::Null]),
            b"*2\r\n$1\r\na\r\n$-1\r\n",
            b"*2\r\n$1\r\na\r\n_\r\n",
        ),
        (
            Reply::Map(vec![(Reply::bulk("proto"), Reply::Integer(3))]),
            b"*2\r\n$5\r\nproto\r\n:3\r\n",
            b"%1\r\n$5\r\nproto\r\n:3\r\n",
        ),
        (
            Reply::Set(vec![Reply::Integer(1)]),
            b"*1\r\n:1\r\n",
            b"~1\r\n:1\r\n",
        ),
        (Reply::Double(1.5), b"$3\r\n1.5\r\n", b",1.5\r\n"),
        (Reply::Double(f64::INFINITY), b"$3\r\ninf\r\n", b",inf\r\n"),
        (
            Reply::Double(f64::NEG_INFINITY),
            b"$4\r\n-inf\r\n",
            b",-inf\r\n",
        ),
        (Reply::Double(f64::NAN), b"$3\r\nnan\r\n", b",nan\r\n"),
        (Reply::Boolean(true), b":1\r\n", b"#t\r\n"),
        (Reply::Boolean(false), b":0\r\n", b"#f\r\n"),
        (
            Reply::Verbatim("a\r\nb".into()),
            b"$4\r\na\r\nb\r\n",
            b"=8\r\ntxt:a\r\nb\r\n",
        ),
    ];
    for (reply, resp2, resp3) in cases {
        assert_eq!(wire(&reply, Resp2), resp2, "RESP2 of {reply:?}");
        assert_eq!(wire(&reply, Resp3), resp3, "RESP3 of {reply:?}");
    }
}

#[test]
fn line_breaks_in_errors_and_statuses_become_spaces() {
    assert_eq!(
        wire(&Reply::Error("ERR a\r\nb".into()), ProtocolVersion::Resp2),
        b"-ERR a  b\r\n"
    );
    assert_eq!(
        wire(&Reply::Status("x\ny".into()), ProtocolVersion::Resp3),
        b"+x y\r\n"
    );
}

#[test]
fn doubles_are_formatted_as_redis_7_2_does() {
    let cases = [
        (0.0, "0"),
        (-0.0, "-0"),
        (3.0, "3"),
        (-3.0, "-3"),
        (0.1, "0.1"),
        (1.5, "1.5"),
        (10.5, "10.5"),
        (1e7, "10000000"),
        (1e8, "1e+8"),
        (123456789.0, "123456789"),
        (1e21, "1e+21"),
        (1.25e22, "1.25e+22"),
        (0.001, "0.001"),
        (1e-6, "0.000001"),
        (1.5e-7, "1.5e-7"),
        (1e300, "1e+300"),
        (-2.5e-300, "-2.5e-300"),
        (f64::MAX, "1.7976931348623157e+308"),
        (5e-324, "5e-324"),
    ];
    for (d, text) in cases {
        assert_eq!(double_text(d), text, "{d:e}");
        // The text reads back as the same double.
        assert_eq!(text.parse::<f64>().ok(), Some(d), "{text}");
    }
}

#[test]
fn integers_format_like_display() {
    for n in [0, 1, -1, 9, 10, -10, 1234567890, i64::MAX, i64::MIN] {
        let mut buf = [0u8; 20];
        assert_eq!(format_int(n, &mut buf), n.to_string().as_bytes());
    }
}

#[test]
fn commands_encode_as_multibulk() {
    let mut out = BytesMut::new();
    encode_command(&["SET", "k", ""], &mut out);
    assert_eq!(&out[..], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
}

fn line_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 _:.-]{0,12}"
}

fn reply_strategy() -> impl Strategy<Value = Reply> {
    let leaf = prop_oneof![
        Just(Reply::OK),
        line_text().prop_map(Reply::Status),
        line_text().prop_map(|s| Reply::Error(format!("ERR {s}"))),
        any::<i64>().prop_map(Reply::Integer),
        proptest::collection::vec(any::<u8>(), 0..32).prop_map(|b| Reply::Bulk(Bytes::from(b))),
        Just(Reply::Null),
        Just(Reply::NullArray),
        any::<f64>()
            .prop_filter("NaN never equals itself", |d| !d.is_nan())
            .prop_map(Reply::Double),
        any::<bool>().prop_map(Reply::Boolean),
        "[ -~\r\n]{0,24}".prop_map(Reply::Verbatim),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Reply::Array),
            // Keys and members distinct, as every Redis map and set is (the
            // decoder's map and set types would merge duplicates).
            proptest::collection::btree_map(any::<i64>(), inner.clone(), 0..6).prop_map(|m| {
                Reply::Map(m.into_iter().map(|(k, v)| (Reply::Integer(k), v)).collect())
            }),
            proptest::collection::btree_set(any::<i64>(), 0..6)
                .prop_map(|s| Reply::Set(s.into_iter().map(Reply::Integer).collect())),
        ]
    })
}

proptest! {
    #[test]
    fn every_reply_round_trips_through_redis_protocol(reply in reply_strategy()) {
        assert_round_trips(&reply);
    }

    #[test]
    fn every_double_reads_back_exactly(d in any::<f64>().prop_filter("not NaN", |d| !d.is_nan())) {
        prop_assert_eq!(double_text(d).parse::<f64>().ok(), Some(d));
    }
}

#[test]
fn raw_replies_are_copied_as_they_are_inside_arrays() {
    let reply = Reply::Array(vec![
        Reply::Raw(bytes::Bytes::from_static(b":5\r\n")),
        Reply::Raw(bytes::Bytes::from_static(b"*2\r\n$1\r\na\r\n$1\r\nb\r\n")),
        Reply::Null,
    ]);
    assert_eq!(
        wire(&reply, ProtocolVersion::Resp2),
        b"*3\r\n:5\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n".to_vec()
    );
}
