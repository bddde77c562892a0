use super::*;
use crate::protocol::{encode, ProtocolVersion, Reply};
use proptest::prelude::*;

fn decode_all(input: &[u8], chunk: usize) -> Result<Vec<Value>, MalformedReply> {
    let mut decoder = ValueDecoder::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        while let Some(v) = decoder.decode(&mut buf)? {
            out.push(v);
        }
    }
    Ok(out)
}

fn one(input: &[u8]) -> Value {
    let values = decode_all(input, input.len()).expect("valid reply");
    assert_eq!(values.len(), 1, "{values:?}");
    values.into_iter().next().unwrap_or(Value::Nil)
}

fn bulk(s: &str) -> Value {
    Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
}

#[test]
fn every_type_decodes() {
    assert_eq!(one(b"+OK\r\n"), Value::Status("OK".into()));
    assert_eq!(one(b"-ERR x\r\n"), Value::Error("ERR x".into()));
    assert_eq!(one(b":-7\r\n"), Value::Integer(-7));
    assert_eq!(one(b"$3\r\na\r\n\r\n"), bulk("a\r\n"));
    assert_eq!(one(b"$-1\r\n"), Value::Nil);
    assert_eq!(one(b"*-1\r\n"), Value::Nil);
    assert_eq!(one(b"_\r\n"), Value::Nil);
    assert_eq!(one(b"#t\r\n"), Value::Boolean(true));
    assert_eq!(one(b",1.5\r\n"), Value::Double(1.5));
    assert_eq!(one(b",-inf\r\n"), Value::Double(f64::NEG_INFINITY));
    assert_eq!(
        one(b"(123456789012345678901234567890\r\n"),
        Value::BigNumber("123456789012345678901234567890".into())
    );
    assert_eq!(one(b"!5\r\nERR x\r\n"), Value::Error("ERR x".into()));
    assert_eq!(
        one(b"=8\r\ntxt:a\r\nb\r\n"),
        Value::Verbatim {
            format: "txt".into(),
            text: Bytes::from("a\r\nb")
        }
    );
    assert_eq!(one(b"*0\r\n"), Value::Array(vec![]));
    assert_eq!(one(b"%0\r\n"), Value::Map(vec![]));
    assert_eq!(
        one(b">2\r\n+a\r\n:1\r\n"),
        Value::Push(vec![Value::Status("a".into()), Value::Integer(1)])
    );
}

#[test]
fn maps_keep_the_server_order_and_sets_may_hold_arrays() {
    assert_eq!(
        one(b"%3\r\n+z\r\n:1\r\n+a\r\n:2\r\n+m\r\n:3\r\n"),
        Value::Map(vec![
            (Value::Status("z".into()), Value::Integer(1)),
            (Value::Status("a".into()), Value::Integer(2)),
            (Value::Status("m".into()), Value::Integer(3)),
        ])
    );
    // The shape of Redis 7's COMMAND DOCS SET `history` field, which
    // redis-protocol cannot decode.
    assert_eq!(
        one(b"~1\r\n*2\r\n$6\r\n2.6.12\r\n$5\r\nAdded\r\n"),
        Value::Set(vec![Value::Array(vec![bulk("2.6.12"), bulk("Added")])])
    );
}

#[test]
fn attributes_are_skipped() {
    assert_eq!(one(b"|1\r\n+ttl\r\n:3\r\n:42\r\n"), Value::Integer(42));
    assert_eq!(
        one(b"*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n"),
        Value::Array(vec![Value::Integer(1), Value::Integer(2)])
    );
}

#[test]
fn nested_replies_decode_at_every_split_point() {
    let input: &[u8] =
        b"*3\r\n%1\r\n$1\r\nk\r\n~2\r\n:1\r\n,2.5\r\n_\r\n*1\r\n$0\r\n\r\n+after\r\n";
    let whole = decode_all(input, input.len()).unwrap();
    assert_eq!(whole.len(), 2);
    for chunk in 1..input.len() {
        assert_eq!(decode_all(input, chunk).unwrap(), whole, "chunk {chunk}");
    }
}

#[test]
fn deep_nesting_is_refused_without_recursion() {
    let input = b"*1\r\n".repeat(100_000);
    assert_eq!(
        decode_all(&input, input.len()),
        Err(MalformedReply("nested too deep".into()))
    );
}

#[test]
fn huge_declared_lengths_are_refused_before_allocating() {
    assert!(decode_all(b"$99999999999\r\n", 64).is_err());
    assert!(decode_all(b"*99999999999\r\n", 64).is_err());
    assert!(decode_all(b"$-2\r\n", 64).is_err());
    // Within limits: waits for the bytes, holding only those that arrived.
    let mut decoder = ValueDecoder::default();
    let mut buf = BytesMut::from(&b"*2000000000\r\n:1\r\n"[..]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert!(decoder.stack[0].items.capacity() <= PREALLOC_CAP);
}

#[test]
fn garbage_is_an_error() {
    assert!(decode_all(b"hello\r\n", 64).is_err());
    assert!(decode_all(b"$1\r\nab\r\n", 64).is_err());
    assert!(decode_all(b":x\r\n", 64).is_err());
    assert!(decode_all(b"=2\r\nab\r\n", 64).is_err());
}

fn wire(reply: &Reply, proto: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(reply, proto, &mut out);
    out.to_vec()
}

/// redis-protocol's RESP2 frame as a Value: the reference decoding.
fn from_reference2(frame: redis_protocol::resp2::types::OwnedFrame) -> Value {
    use redis_protocol::resp2::types::OwnedFrame as F;
    match frame {
        F::SimpleString(s) => Value::Status(String::from_utf8_lossy(&s).into_owned()),
        F::Error(e) => Value::Error(e),
        F::Integer(n) => Value::Integer(n),
        F::BulkString(b) => Value::Bulk(Bytes::from(b)),
        F::Array(items) => Value::Array(items.into_iter().map(from_reference2).collect()),
        F::Null => Value::Nil,
    }
}

/// redis-protocol's RESP3 frame as a Value, for the types it holds without
/// loss (no maps or sets).
fn from_reference3(frame: redis_protocol::resp3::types::OwnedFrame) -> Option<Value> {
    use redis_protocol::resp3::types::OwnedFrame as F;
    Some(match frame {
        F::SimpleString { data, .. } => Value::Status(String::from_utf8_lossy(&data).into_owned()),
        F::SimpleError { data, .. } => Value::Error(data),
        F::Number { data, .. } => Value::Integer(data),
        F::BlobString { data, .. } => Value::Bulk(Bytes::from(data)),
        F::Null => Value::Nil,
        F::Boolean { data, .. } => Value::Boolean(data),
        F::Double { data, .. } => Value::Double(data),
        F::VerbatimString { data, .. } => Value::Verbatim {
            format: "txt".into(),
            text: Bytes::from(data),
        },
        F::Array { data, .. } => Value::Array(
            data.into_iter()
                .map(from_reference3)
                .collect::<Option<_>>()?,
        ),
        _ => return None,
    })
}

fn reply_strategy() -> impl Strategy<Value = Reply> {
    let leaf = prop_oneof![
        "[a-zA-Z0-9 ]{0,10}".prop_map(Reply::Status),
        "[a-zA-Z0-9 ]{0,10}".prop_map(|s| Reply::Error(format!("ERR {s}"))),
        any::<i64>().prop_map(Reply::Integer),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(|b| Reply::Bulk(Bytes::from(b))),
        Just(Reply::Null),
        Just(Reply::NullArray),
        any::<f64>()
            .prop_filter("NaN never equals itself", |d| !d.is_nan())
            .prop_map(Reply::Double),
        any::<bool>().prop_map(Reply::Boolean),
        "[ -~]{0,16}".prop_map(Reply::Verbatim),
    ];
    leaf.prop_recursive(4, 48, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Reply::Array),
            proptest::collection::vec((inner.clone(), inner.clone()), 0..4).prop_map(Reply::Map),
            proptest::collection::vec(inner, 0..4).prop_map(Reply::Set),
        ]
    })
}

proptest! {
    #[test]
    fn agrees_with_redis_protocol_on_every_resp2_reply(reply in reply_strategy(), chunk in 1usize..64) {
        let bytes = wire(&reply, ProtocolVersion::Resp2);
        let (reference, _) = redis_protocol::resp2::decode::decode(&bytes).unwrap().unwrap();
        prop_assert_eq!(decode_all(&bytes, chunk).unwrap(), vec![from_reference2(reference)]);
    }

    #[test]
    fn agrees_with_redis_protocol_on_resp3_replies_it_can_hold(reply in reply_strategy(), chunk in 1usize..64) {
        let bytes = wire(&reply, ProtocolVersion::Resp3);
        let ours = decode_all(&bytes, chunk).unwrap();
        prop_assert_eq!(ours.len(), 1);
        // It refuses sets and maps whose members it cannot hash; ours must not.
        let reference = redis_protocol::resp3::decode::complete::decode(&bytes);
        if let Some(expected) = reference.ok().flatten().and_then(|(frame, _)| from_reference3(frame)) {
            prop_assert_eq!(&ours[0], &expected);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..256), chunk in 1usize..32) {
        let _ = decode_all(&input, chunk);
    }
}
