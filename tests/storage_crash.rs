//! Crash test: cut the commit log at every byte offset of its last records and
//! check that recovery keeps exactly the records that were complete.

use std::fs;
use std::path::{Path, PathBuf};

use ringkv::config::FsyncPolicy;
use ringkv::storage::{Engine, Options, WriteBatch};

/// Record framing from the documented log format (src/storage/wal.rs):
/// 8 bytes of length + CRC, 12 bytes of first seq + count, then per put
/// 1 + 4 + key + 4 + value.
fn put_record_bytes(key: &[u8], value: &[u8]) -> u64 {
    (8 + 12 + 1 + 4 + key.len() + 4 + value.len()) as u64
}

fn options() -> Options {
    Options {
        fsync: FsyncPolicy::No,
        ..Options::default()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "LOCK" {
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn log_segments(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs
}

/// Where the last record ends: segments are preallocated, so the file is
/// longer than its records and reads as zeros after them (every record here
/// ends with a non-zero byte).
fn records_end(path: &Path) -> u64 {
    let bytes = fs::read(path).unwrap();
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1) as u64
}

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:03}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat(i % 7)).into_bytes()
}

#[test]
fn recovery_keeps_exactly_the_complete_records_for_every_cut_of_the_tail() {
    let original = tempfile::tempdir().unwrap();
    const RECORDS: usize = 40;
    const CUT_RECORDS: usize = 6;
    {
        let engine = Engine::open(original.path(), options()).unwrap();
        // Some data already flushed to a table, so recovery combines both.
        for i in 0..10 {
            engine.put(&key(i), &value(i)).unwrap();
        }
        engine.flush().unwrap();
        for i in 10..RECORDS {
            engine.put(&key(i), &value(i)).unwrap();
        }
        engine.close().unwrap();
    }
    let logs = log_segments(original.path());
    let log = logs.last().expect("a log segment").clone();
    let log_name = log.file_name().unwrap().to_owned();
    let full_len = records_end(&log);
    // Offsets at which each of the last records ends.
    let mut ends = Vec::new();
    let mut end = full_len;
    for i in (RECORDS - CUT_RECORDS..RECORDS).rev() {
        ends.push((i, end));
        end -= put_record_bytes(&key(i), &value(i));
    }
    let first_cut = end;
    ends.reverse();

    for cut in first_cut..=full_len {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(original.path(), copy.path());
        let file = fs::OpenOptions::new()
            .write(true)
            .open(copy.path().join(&log_name))
            .unwrap();
        file.set_len(cut).unwrap();
        if cut % 2 == 1 {
            // As after a crash with a preallocated segment: zeros follow the
            // torn tail.
            file.set_len(full_len + 4096).unwrap();
        }
        drop(file);

        let complete = ends.iter().filter(|(_, end)| *end <= cut).count();
        let expect_present = RECORDS - CUT_RECORDS + complete;
        let engine = Engine::open(copy.path(), options()).unwrap();
        for i in 0..RECORDS {
            let got = engine.get(&key(i)).unwrap();
            if i < expect_present {
                assert_eq!(
                    got.as_deref(),
                    Some(value(i).as_slice()),
                    "cut {cut}: record {i} lost"
                );
            } else {
                assert_eq!(got, None, "cut {cut}: torn record {i} resurrected");
            }
        }
        // The torn tail is gone for good: new writes after it survive a reopen.
        engine.put(b"after", b"crash").unwrap();
        engine.close().unwrap();
        drop(engine);
        let engine = Engine::open(copy.path(), options()).unwrap();
        assert_eq!(
            engine.get(b"after").unwrap().as_deref(),
            Some(&b"crash"[..]),
            "cut {cut}"
        );
        let present = (0..RECORDS)
            .filter(|&i| engine.get(&key(i)).unwrap().is_some())
            .count();
        assert_eq!(present, expect_present, "cut {cut}: second reopen");
    }
}

#[test]
fn a_batch_is_recovered_whole_or_not_at_all() {
    let original = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(original.path(), options()).unwrap();
        engine.put(b"before", b"1").unwrap();
        let mut batch = WriteBatch::new();
        for i in 0..5 {
            batch.put(&key(i), &value(i));
        }
        engine.write(&batch).unwrap();
        engine.close().unwrap();
    }
    let log = log_segments(original.path()).last().unwrap().clone();
    let full_len = records_end(&log);
    let batch_len = 8
        + 12
        + (0..5)
            .map(|i| 1 + 4 + key(i).len() + 4 + value(i).len())
            .sum::<usize>();
    for cut in full_len - batch_len as u64..=full_len {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(original.path(), copy.path());
        let file = fs::OpenOptions::new()
            .write(true)
            .open(copy.path().join(log.file_name().unwrap()))
            .unwrap();
        file.set_len(cut).unwrap();
        drop(file);
        let engine = Engine::open(copy.path(), options()).unwrap();
        assert_eq!(engine.get(b"before").unwrap().as_deref(), Some(&b"1"[..]));
        let present = (0..5)
            .filter(|&i| engine.get(&key(i)).unwrap().is_some())
            .count();
        let expected = if cut == full_len { 5 } else { 0 };
        assert_eq!(present, expected, "cut {cut}");
    }
}

#[test]
fn a_corrupt_record_in_the_middle_drops_it_and_everything_after() {
    let original = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(original.path(), options()).unwrap();
        for i in 0..20 {
            engine.put(&key(i), &value(i)).unwrap();
        }
        engine.close().unwrap();
    }
    let log = log_segments(original.path()).last().unwrap().clone();
    let mut bytes = fs::read(&log).unwrap();
    // Flip a byte inside record 10's value.
    let offset: u64 = 16
        + (0..10)
            .map(|i| put_record_bytes(&key(i), &value(i)))
            .sum::<u64>();
    let at = (offset + put_record_bytes(&key(10), &value(10)) - 2) as usize;
    bytes[at] ^= 0x40;
    fs::write(&log, &bytes).unwrap();
    let engine = Engine::open(original.path(), options()).unwrap();
    for i in 0..20 {
        assert_eq!(engine.get(&key(i)).unwrap().is_some(), i < 10, "record {i}");
    }
    assert_eq!(
        fs::metadata(&log).unwrap().len(),
        offset,
        "log truncated at the bad record"
    );
}
