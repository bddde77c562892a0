//! Replies printed the way `redis-cli` 7 prints them, so that what a user sees
//! (and what scripts parse) is the same with either tool.
//!
//! - [`format_tty`]: the human form (`cliFormatReplyTTY`): `"quoted"` strings
//!   with C escapes, `(integer) 1`, `(nil)`, `(error) ...`, numbered arrays
//!   (`1)`), sets (`1~`) and maps (`1# key => value`) indented under their
//!   parent, `(double) 1.5`, `(true)`, verbatim text as is, and a map value
//!   that spans lines starting on its own line (redis-cli 7.2's alignment).
//! - [`format_raw`]: the script form (`cliFormatReplyRaw`, what `redis-cli`
//!   prints when stdout is not a terminal): bare strings, one element per
//!   line, map pairs as `key value`, nothing for nil.
//!
//! One addition: `(big number) ...` for RESP3 big numbers, which redis-cli
//! 7.0 refuses to print ("Unknown reply type") and 7.2 prints the same way.

use crate::client::Value;

/// `sdscatrepr`: the string in double quotes, with `\\ \" \n \r \t \a \b`
/// escaped, other printable ASCII as is, and every other byte as `\xHH`.
pub fn repr(bytes: &[u8], out: &mut String) {
    out.push('"');
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x07 => out.push_str("\\a"),
            0x08 => out.push_str("\\b"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\x");
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 0xf)] as char);
            }
        }
    }
    out.push('"');
}

/// An array of rows of scalars as an aligned table under `headers`, for
/// the REPL's `CLUSTER PREFLIST`/`HINTS`; `None` if `value` is not such an
/// array (an error, say), which is then printed as usual. An empty array
/// prints `(empty table)`.
pub fn format_table(headers: &[&str], value: &Value) -> Option<String> {
    let Value::Array(rows) = value else {
        return None;
    };
    if rows.is_empty() {
        return Some("(empty table)\n".to_string());
    }
    let mut cells: Vec<Vec<String>> = vec![headers.iter().map(|h| h.to_string()).collect()];
    for row in rows {
        let Value::Array(fields) = row else {
            return None;
        };
        let mut line = Vec::with_capacity(fields.len());
        for field in fields {
            line.push(match field {
                Value::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
                Value::Status(s) => s.clone(),
                Value::Integer(n) => n.to_string(),
                Value::Nil => String::new(),
                _ => return None,
            });
        }
        cells.push(line);
    }
    let columns = cells.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            cells
                .iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &cells {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                let pad = widths[c] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Some(out)
}

/// The human form of `value`, ending in a newline.
pub fn format_tty(value: &Value) -> String {
    let mut out = String::new();
    write_tty(value, "", &mut out);
    out
}

fn write_tty(value: &Value, prefix: &str, out: &mut String) {
    match value {
        Value::Error(e) => {
            out.push_str("(error) ");
            out.push_str(e);
            out.push('\n');
        }
        Value::Status(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Integer(n) => {
            out.push_str("(integer) ");
            out.push_str(&n.to_string());
            out.push('\n');
        }
        Value::Double(d) => {
            out.push_str("(double) ");
            out.push_str(&double_text(*d));
            out.push('\n');
        }
        Value::BigNumber(n) => {
            out.push_str("(big number) ");
            out.push_str(n);
            out.push('\n');
        }
        Value::Bulk(b) => {
            repr(b, out);
            out.push('\n');
        }
        Value::Verbatim { text, .. } => {
            out.push_str(&String::from_utf8_lossy(text));
            out.push('\n');
        }
        Value::Nil => out.push_str("(nil)\n"),
        Value::Boolean(b) => out.push_str(if *b { "(true)\n" } else { "(false)\n" }),
        Value::Array(items) | Value::Set(items) | Value::Push(items) if items.is_empty() => {
            out.push_str(match value {
                Value::Set(_) => "(empty set)\n",
                Value::Push(_) => "(empty push)\n",
                _ => "(empty array)\n",
            });
        }
        Value::Map(pairs) if pairs.is_empty() => out.push_str("(empty hash)\n"),
        Value::Array(items) | Value::Set(items) | Value::Push(items) => {
            let separator = if matches!(value, Value::Set(_)) {
                '~'
            } else {
                ')'
            };
            let (width, child_prefix) = child_layout(items.len(), prefix);
            for (i, item) in items.iter().enumerate() {
                write_index(
                    out,
                    if i == 0 { "" } else { prefix },
                    i + 1,
                    width,
                    separator,
                );
                write_tty(item, &child_prefix, out);
            }
        }
        Value::Map(pairs) => {
            let (width, child_prefix) = child_layout(pairs.len(), prefix);
            for (i, (key, val)) in pairs.iter().enumerate() {
                write_index(out, if i == 0 { "" } else { prefix }, i + 1, width, '#');
                write_tty(key, &child_prefix, out);
                // The key's newline makes way for the value.
                out.pop();
                out.push_str(" => ");
                if is_multiline(val) {
                    out.push('\n');
                    out.push_str(&child_prefix);
                }
                write_tty(val, &child_prefix, out);
            }
        }
    }
}

/// Width of the largest index, and the prefix for nested lines (the parent's
/// prefix plus the index width plus two, as redis-cli indents).
fn child_layout(count: usize, prefix: &str) -> (usize, String) {
    let width = count.to_string().len();
    let mut child = String::with_capacity(prefix.len() + width + 2);
    child.push_str(prefix);
    child.extend(std::iter::repeat_n(' ', width + 2));
    (width, child)
}

fn write_index(out: &mut String, prefix: &str, index: usize, width: usize, separator: char) {
    out.push_str(prefix);
    let digits = index.to_string();
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(digits.len())));
    out.push_str(&digits);
    out.push(separator);
    out.push(' ');
}

/// redis-cli's `cliIsMultilineValueTTY`.
fn is_multiline(value: &Value) -> bool {
    match value {
        Value::Array(items) | Value::Set(items) | Value::Push(items) => match items.len() {
            0 => false,
            1 => is_multiline(&items[0]),
            _ => true,
        },
        Value::Map(pairs) => match pairs.len() {
            0 => false,
            1 => is_multiline(&pairs[0].1),
            _ => true,
        },
        _ => false,
    }
}

/// A RESP3 double as the server spelled it (our encoder's formatting, which
/// is Redis 7.2's).
fn double_text(d: f64) -> String {
    let mut buf = [0u8; crate::protocol::encode::DOUBLE_MAX_LEN];
    let n = crate::protocol::encode::format_double(d, &mut buf);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The raw form of `value`, without the trailing newline `redis-cli` adds
/// after each command's output (see [`format_raw_line`]).
pub fn format_raw(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Nil => {}
        Value::Error(e) => {
            out.extend_from_slice(e.as_bytes());
            out.push(b'\n');
        }
        Value::Status(s) => out.extend_from_slice(s.as_bytes()),
        Value::Bulk(b) | Value::Verbatim { text: b, .. } => out.extend_from_slice(b),
        Value::Boolean(b) => out.extend_from_slice(if *b { b"(true)" } else { b"(false)" }),
        Value::Integer(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::Double(d) => out.extend_from_slice(double_text(*d).as_bytes()),
        Value::BigNumber(n) => out.extend_from_slice(n.as_bytes()),
        Value::Array(items) | Value::Set(items) | Value::Push(items) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b'\n');
                }
                format_raw(item, out);
            }
        }
        Value::Map(pairs) => {
            for (i, (key, val)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push(b'\n');
                }
                format_raw(key, out);
                out.push(b' ');
                format_raw(val, out);
            }
        }
    }
}

/// One command's output in raw mode: [`format_raw`] plus a newline.
pub fn format_raw_line(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    format_raw(value, &mut out);
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn scalars_print_as_redis_cli_prints_them() {
        assert_eq!(format_tty(&bulk("value")), "\"value\"\n");
        assert_eq!(format_tty(&Value::Integer(1)), "(integer) 1\n");
        assert_eq!(format_tty(&Value::Nil), "(nil)\n");
        assert_eq!(format_tty(&Value::Status("OK".into())), "OK\n");
        assert_eq!(
            format_tty(&Value::Error("ERR unknown command 'foo'".into())),
            "(error) ERR unknown command 'foo'\n"
        );
        assert_eq!(format_tty(&Value::Double(1.5)), "(double) 1.5\n");
        assert_eq!(format_tty(&Value::Double(2.0)), "(double) 2\n");
        assert_eq!(format_tty(&Value::Boolean(true)), "(true)\n");
        assert_eq!(
            format_tty(&Value::Verbatim {
                format: "txt".into(),
                text: Bytes::from("id=1 addr=x")
            }),
            "id=1 addr=x\n"
        );
        assert_eq!(
            format_tty(&Value::BigNumber("12345678901234567890".into())),
            "(big number) 12345678901234567890\n"
        );
    }

    #[test]
    fn binary_strings_are_escaped_like_sdscatrepr() {
        let v = Value::Bulk(Bytes::from_static(b"a\"b\nc\x01\xff \\\t\r\x07\x08"));
        assert_eq!(
            format_tty(&v),
            "\"a\\\"b\\nc\\x01\\xff \\\\\\t\\r\\a\\b\"\n"
        );
    }

    #[test]
    fn arrays_are_numbered_with_aligned_indices() {
        let items: Vec<Value> = "abcdefghijk"
            .chars()
            .map(|c| bulk(&c.to_string()))
            .collect();
        let text = format_tty(&Value::Array(items));
        assert!(text.starts_with(" 1) \"a\"\n 2) \"b\"\n"));
        assert!(text.ends_with(" 9) \"i\"\n10) \"j\"\n11) \"k\"\n"));
        assert_eq!(format_tty(&Value::Array(vec![])), "(empty array)\n");
        assert_eq!(format_tty(&Value::Set(vec![])), "(empty set)\n");
        assert_eq!(format_tty(&Value::Map(vec![])), "(empty hash)\n");
    }

    #[test]
    fn nested_arrays_indent_under_their_parent() {
        // Verified against redis-cli 7.0: EVAL "return {1,{2,{3,4}},'x'}".
        let v = Value::Array(vec![
            Value::Integer(1),
            Value::Array(vec![
                Value::Integer(2),
                Value::Array(vec![Value::Integer(3), Value::Integer(4)]),
            ]),
            bulk("x"),
        ]);
        assert_eq!(
            format_tty(&v),
            "1) (integer) 1\n2) 1) (integer) 2\n   2) 1) (integer) 3\n      2) (integer) 4\n3) \"x\"\n"
        );
    }

    #[test]
    fn maps_and_sets_use_redis_cli_7_markers() {
        // HELLO 3 as redis-cli 7 shows it.
        let hello = Value::Map(vec![
            (bulk("server"), bulk("redis")),
            (bulk("proto"), Value::Integer(3)),
            (bulk("modules"), Value::Array(vec![])),
        ]);
        assert_eq!(
            format_tty(&hello),
            "1# \"server\" => \"redis\"\n2# \"proto\" => (integer) 3\n3# \"modules\" => (empty array)\n"
        );
        assert_eq!(
            format_tty(&Value::Set(vec![bulk("y"), bulk("x")])),
            "1~ \"y\"\n2~ \"x\"\n"
        );
    }

    #[test]
    fn a_multiline_map_value_starts_on_its_own_line() {
        // COMMAND DOCS GET, as redis-cli 7 shows it.
        let docs = Value::Map(vec![(
            bulk("get"),
            Value::Map(vec![
                (bulk("summary"), bulk("Get the value of a key")),
                (
                    bulk("arguments"),
                    Value::Array(vec![Value::Map(vec![
                        (bulk("name"), bulk("key")),
                        (bulk("type"), bulk("key")),
                    ])]),
                ),
            ]),
        )]);
        assert_eq!(
            format_tty(&docs),
            "1# \"get\" => \n   1# \"summary\" => \"Get the value of a key\"\n   2# \"arguments\" => \n      1) 1# \"name\" => \"key\"\n         2# \"type\" => \"key\"\n"
        );
    }

    #[test]
    fn cluster_tables_align_their_columns_under_headers() {
        let row = |a: &str, b: i64| {
            Value::Array(vec![bulk(a), Value::Integer(b), Value::Status("up".into())])
        };
        let table = format_table(
            &["NODE", "N", "STATUS"],
            &Value::Array(vec![row("abc", 7), row("a", 12345)]),
        )
        .expect("a table");
        assert_eq!(
            table,
            "NODE  N      STATUS\nabc   7      up\na     12345  up\n"
        );
        assert_eq!(
            format_table(&["X"], &Value::Array(vec![])).as_deref(),
            Some("(empty table)\n")
        );
        assert_eq!(format_table(&["X"], &Value::Error("ERR no".into())), None);
    }

    #[test]
    fn raw_output_is_bare_and_line_per_element() {
        assert_eq!(format_raw_line(&bulk("a\"b")), b"a\"b\n");
        assert_eq!(format_raw_line(&Value::Nil), b"\n");
        assert_eq!(format_raw_line(&Value::Integer(2)), b"2\n");
        assert_eq!(format_raw_line(&Value::Error("ERR x".into())), b"ERR x\n\n");
        assert_eq!(
            format_raw_line(&Value::Array(vec![bulk("a"), bulk("b")])),
            b"a\nb\n"
        );
        assert_eq!(
            format_raw_line(&Value::Map(vec![
                (bulk("f1"), bulk("v1")),
                (bulk("f2"), bulk("v2"))
            ])),
            b"f1 v1\nf2 v2\n"
        );
        assert_eq!(format_raw_line(&Value::Double(1.5)), b"1.5\n");
        assert_eq!(format_raw_line(&Value::Array(vec![])), b"\n");
    }
}
