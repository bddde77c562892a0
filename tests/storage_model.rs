//! Model test: random puts, deletes, batches, gets and scans against the
//! engine and a `BTreeMap`, with flushes, compactions, reopens and crash
//! points in between.
//! Memtables are tiny so that freezes, flushes and background compactions
//! happen all the time.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

use proptest::prelude::*;
use ringkv::config::FsyncPolicy;
use ringkv::storage::{Engine, Options, WriteBatch};

#[derive(Clone, Debug)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Batch(Vec<(Vec<u8>, Option<Vec<u8>>)>),
    Get(Vec<u8>),
    Scan(Bound<Vec<u8>>, Bound<Vec<u8>>),
    ScanPrefix(Vec<u8>),
    Flush,
    Compact,
    Reopen,
    /// Copy the directory as it is (as a crash would leave it: no clean
    /// close, no trimmed log) and carry on from the copy.
    Crash,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    // A small alphabet and short keys, so keys collide and share prefixes.
    prop::collection::vec(prop::sample::select(vec![b'a', b'b', b'c', 0xff]), 0..4)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..40)
}

fn bound() -> impl Strategy<Value = Bound<Vec<u8>>> {
    prop_oneof![
        Just(Bound::Unbounded),
        key().prop_map(Bound::Included),
        key().prop_map(Bound::Excluded),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (key(), value()).prop_map(|(k, v)| Op::Put(k, v)),
        10 => key().prop_map(Op::Delete),
        5 => prop::collection::vec((key(), prop::option::of(value())), 1..6).prop_map(Op::Batch),
        20 => key().prop_map(Op::Get),
        5 => (bound(), bound()).prop_map(|(a, b)| Op::Scan(a, b)),
        3 => key().prop_map(Op::ScanPrefix),
        2 => Just(Op::Flush),
        2 => Just(Op::Compact),
        2 => Just(Op::Reopen),
        2 => Just(Op::Crash),
    ]
}

/// Background flushes and compactions racing the operations.
fn background_options() -> Options {
    Options {
        fsync: FsyncPolicy::No,
        memtable_bytes: 2048,
        max_frozen_memtables: 1,
        wal_segment_bytes: 1024,
        target_table_bytes: 512,
        ..Options::default()
    }
}

/// Every acknowledged write is on disk, so a crash image holds all of them;
/// without background threads the directory is quiescent between
/// operations, so a file-by-file copy is a consistent image.
fn crash_options() -> Options {
    Options {
        fsync: FsyncPolicy::Always,
        background_threads: false,
        ..background_options()
    }
}

fn model_range(
    model: &BTreeMap<Vec<u8>, Vec<u8>>,
    start: Bound<&[u8]>,
    end: Bound<&[u8]>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    model
        .iter()
        .filter(|(k, _)| {
            let after_start = match start {
                Bound::Included(s) => k.as_slice() >= s,
                Bound::Excluded(s) => k.as_slice() > s,
                Bound::Unbounded => true,
            };
            let before_end = match end {
                Bound::Included(e) => k.as_slice() <= e,
                Bound::Excluded(e) => k.as_slice() < e,
                Bound::Unbounded => true,
            };
            after_start && before_end
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn collect(scan: ringkv::storage::Scan) -> Vec<(Vec<u8>, Vec<u8>)> {
    scan.map(|item| {
        let (k, v) = item.expect("scan item");
        (k.to_vec(), v.to_vec())
    })
    .collect()
}

fn as_ref(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn crash_image(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn run(first_dir: &Path, ops: Vec<Op>, options: fn() -> Options) {
    let mut crash_dirs = Vec::new();
    let mut dir = first_dir.to_path_buf();
    let mut engine = Engine::open(&dir, options()).expect("open");
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Put(k, v) => {
                engine.put(&k, &v).unwrap();
                model.insert(k, v);
            }
            Op::Delete(k) => {
                engine.delete(&k).unwrap();
                model.remove(&k);
            }
            Op::Batch(ops) => {
                let mut batch = WriteBatch::new();
                for (k, v) in ops {
                    match v {
                        Some(v) => {
                            batch.put(&k, &v);
                            model.insert(k, v);
                        }
                        None => {
                            batch.delete(&k);
                            model.remove(&k);
                        }
                    }
                }
                engine.write(&batch).unwrap();
            }
            Op::Get(k) => {
                let got = engine.get(&k).unwrap().map(|v| v.to_vec());
                assert_eq!(got.as_ref(), model.get(&k), "get {k:?}");
            }
            Op::Scan(start, end) => {
                let got = collect(engine.scan(as_ref(&start), as_ref(&end)).unwrap());
                assert_eq!(
                    got,
                    model_range(&model, as_ref(&start), as_ref(&end)),
                    "scan {start:?}..{end:?}"
                );
            }
            Op::ScanPrefix(prefix) => {
                let got = collect(engine.scan_prefix(&prefix).unwrap());
                let expected: Vec<_> = model
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(got, expected, "scan_prefix {prefix:?}");
            }
            Op::Flush => engine.flush().unwrap(),
            Op::Compact => engine.compact().unwrap(),
            Op::Reopen => {
                engine.close().unwrap();
                drop(engine);
                engine = Engine::open(&dir, options()).expect("reopen");
            }
            // A crash image is only consistent while nothing runs in the
            // background; with background threads, reopen instead.
            Op::Crash if options().background_threads => {
                engine.close().unwrap();
                drop(engine);
                engine = Engine::open(&dir, options()).expect("reopen");
            }
            Op::Crash => {
                let image = tempfile::tempdir().unwrap();
                crash_image(&dir, image.path());
                drop(engine);
                dir = image.path().to_path_buf();
                crash_dirs.push(image);
                engine = Engine::open(&dir, options()).expect("open after crash");
            }
        }
    }
    let everything = collect(engine.scan(Bound::Unbounded, Bound::Unbounded).unwrap());
    assert_eq!(
        everything,
        model_range(&model, Bound::Unbounded, Bound::Unbounded)
    );
    engine.close().unwrap();
    let engine = Engine::open(&dir, options()).expect("final reopen");
    let everything = collect(engine.scan(Bound::Unbounded, Bound::Unbounded).unwrap());
    assert_eq!(
        everything,
        model_range(&model, Bound::Unbounded, Bound::Unbounded),
        "after final reopen"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn engine_behaves_like_a_btreemap_while_background_threads_flush_and_compact(
        ops in prop::collection::vec(op(), 1..250)
    ) {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), ops, background_options);
    }

    #[test]
    fn engine_behaves_like_a_btreemap_across_crashes_flushes_compactions_and_reopens(
        ops in prop::collection::vec(op(), 1..250)
    ) {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), ops, crash_options);
    }
}

#[test]
fn scan_is_a_snapshot_unaffected_by_later_writes_flushes_and_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), background_options()).unwrap();
    for i in 0..200u32 {
        engine.put(format!("k{i:04}").as_bytes(), b"old").unwrap();
    }
    let scan = engine.scan(Bound::Unbounded, Bound::Unbounded).unwrap();
    for i in 0..200u32 {
        if i % 2 == 0 {
            engine.delete(format!("k{i:04}").as_bytes()).unwrap();
        } else {
            engine.put(format!("k{i:04}").as_bytes(), b"new").unwrap();
        }
    }
    engine.put(b"k9999", b"new").unwrap();
    engine.compact().unwrap();
    let seen = collect(scan);
    assert_eq!(seen.len(), 200);
    assert!(seen.iter().all(|(_, v)| v == b"old"));
    assert_eq!(engine.get(b"k0001").unwrap().as_deref(), Some(&b"new"[..]));
    assert_eq!(engine.get(b"k0000").unwrap(), None);
}
