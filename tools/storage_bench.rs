//! Storage engine benchmark: loads, point reads, group commit, reopen, memory.
//!
//! ```text
//! cargo run --release --example storage_bench -- [--quick] [--keys N] ...
//! ```
//!
//! Phases (each on a fresh directory under `--dir`, deleted afterwards):
//!
//! 1. `seq`: sequential load of `--keys` keys (16-byte keys, `--value-bytes`
//!    values) from one thread, `fsync everysec`.
//! 2. `random`: the same keys in random order; then a full compaction.
//! 3. `gets`: on the compacted random data set, `--get-threads` threads read
//!    random present keys, then random absent keys. For the absent keys it
//!    reports the share of gets that read a data block next to what the
//!    bloom filters' false-positive rate predicts for the tables consulted.
//! 4. `always`: `--always-writers` threads put under `fsync always`; group
//!    commit shares fsyncs.
//! 5. `reopen`: a child process fills a 64 MiB memtable (no flush) and is
//!    killed with SIGKILL; the time to reopen (replay the log) is measured.
//! 6. `server` (not in the default list): the storage half of
//!    `redis-benchmark -t set,get -r 1000000 -d 100`, as the server's keyspace
//!    drives it. `--server-threads` threads each run `--server-ops` SETs over
//!    `--server-keys` random keys (18-byte keys: a big-endian partition then
//!    16 bytes; `--server-value-bytes` values), each SET an `engine.get`
//!    followed by a one-put `write_unsynced`; then as many GETs. Run it alone
//!    (`--phases server`) to profile the hot paths.
//!
//! Peak resident memory (VmHWM) is read from /proc/self/status at the end.
//! A benchmark is a tool, not a test: it prints a table and never fails on a
//! number.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rand::Rng;
use ringkv::config::FsyncPolicy;
use ringkv::storage::bloom::probes_for;
use ringkv::storage::{Engine, EngineStats, Options, WriteBatch};

#[derive(Parser, Debug, Clone)]
#[command(about = "ringkv storage engine benchmark")]
struct Args {
    /// Working directory (each phase uses a fresh subdirectory).
    #[arg(long, default_value = "target/storage-bench")]
    dir: PathBuf,
    /// Keys loaded by the seq and random phases.
    #[arg(long, default_value_t = 10_000_000)]
    keys: u64,
    /// Value size in bytes (keys are 16 bytes).
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Point reads per kind (present, absent) in the gets phase.
    #[arg(long, default_value_t = 2_000_000)]
    gets: u64,
    /// Reader threads in the gets phase.
    #[arg(long, default_value_t = 2)]
    get_threads: u64,
    /// Concurrent writers in the always phase.
    #[arg(long, default_value_t = 50)]
    always_writers: u64,
    /// Total puts in the always phase.
    #[arg(long, default_value_t = 1_000_000)]
    always_puts: u64,
    /// Memtable size in MiB.
    #[arg(long, default_value_t = 64)]
    memtable_mib: usize,
    /// Block cache size in MiB.
    #[arg(long, default_value_t = 64)]
    cache_mib: usize,
    /// Quick mode: 1M keys, 500k gets, 200k always-puts (about a minute).
    #[arg(long)]
    quick: bool,
    /// Phases to run, comma-separated: seq,random,gets,always,reopen.
    #[arg(long, default_value = "seq,random,gets,always,reopen")]
    phases: String,
    /// Key space of the server phase.
    #[arg(long, default_value_t = 1_000_000)]
    server_keys: u64,
    /// SETs, then GETs, per thread in the server phase.
    #[arg(long, default_value_t = 1_000_000)]
    server_ops: u64,
    /// Threads in the server phase (the server's worker count).
    #[arg(long, default_value_t = 2)]
    server_threads: u64,
    /// Value size in the server phase (an encoded sibling set of a 100-byte
    /// user value).
    #[arg(long, default_value_t = 130)]
    server_value_bytes: usize,
    /// Internal: run as the reopen phase's child, filling this directory.
    #[arg(long, hide = true)]
    child_fill: Option<PathBuf>,
}

/// 16-byte keys. Sequential: the index big-endian, padded. Random order: a
/// bijective scramble of the index first (so order is random), then the index
/// (so keys stay unique).
fn seq_key(i: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&i.to_be_bytes());
    key
}

fn random_key(i: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    key[8..].copy_from_slice(&i.to_be_bytes());
    key
}

/// The keyspace's on-disk key for redis-benchmark's `key:__rand_int__`: the
/// partition (u16 big-endian, one of 256, from a hash of the user key) then
/// `key:` and the index as 12 decimal digits. Keys of one partition share
/// their first eight bytes, as they do in the server.
fn server_key(i: u64) -> [u8; 18] {
    let mut key = [0u8; 18];
    let partition = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u16;
    key[..2].copy_from_slice(&partition.to_be_bytes());
    key[2..6].copy_from_slice(b"key:");
    let mut rest = i;
    for digit in key[6..].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    key
}

fn value(i: u64, len: usize, buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&i.to_le_bytes());
    buf.resize(len.max(8), b'v');
}

fn options(args: &Args, fsync: FsyncPolicy) -> Options {
    Options {
        fsync,
        memtable_bytes: args.memtable_mib << 20,
        block_cache_bytes: args.cache_mib << 20,
        ..Options::default()
    }
}

fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let rest = line.strip_prefix(field)?.strip_prefix(':')?;
                rest.trim().trim_end_matches("kB").trim().parse().ok()
            })
        })
        .unwrap_or(0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

struct Report {
    rows: Vec<[String; 4]>,
}

impl Report {
    fn row(&mut self, phase: &str, metric: &str, value: String, note: String) {
        println!("  {phase:<8} {metric:<44} {value:>16}  {note}");
        self.rows.push([phase.into(), metric.into(), value, note]);
    }

    fn markdown(&self) -> String {
        let mut out = String::from("| phase | metric | value | notes |\n|---|---|---|---|\n");
        for [phase, metric, value, note] in &self.rows {
            out.push_str(&format!("| {phase} | {metric} | {value} | {note} |\n"));
        }
        out
    }
}

fn fresh_dir(args: &Args, name: &str) -> Result<PathBuf> {
    let dir = args.dir.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn load(
    args: &Args,
    report: &mut Report,
    phase: &str,
    key: fn(u64) -> [u8; 16],
) -> Result<(Engine, PathBuf)> {
    let dir = fresh_dir(args, phase)?;
    let engine = Engine::open(&dir, options(args, FsyncPolicy::Everysec))?;
    let mut buf = Vec::with_capacity(args.value_bytes);
    let started = Instant::now();
    for i in 0..args.keys {
        value(i, args.value_bytes, &mut buf);
        engine.put(&key(i), &buf)?;
    }
    let elapsed = started.elapsed();
    let stats = engine.stats();
    report.row(
        phase,
        "puts/s, one thread, everysec",
        format!("{:.0}", args.keys as f64 / elapsed.as_secs_f64()),
        format!(
            "{} keys in {:.1} s; {} flushes, {} compactions, {} stalls ({:.2} s)",
            args.keys,
            elapsed.as_secs_f64(),
            stats.flushes,
            stats.compactions,
            stats.write_stalls,
            stats.write_stall_micros as f64 / 1e6
        ),
    );
    report.row(
        phase,
        "RSS after load",
        mib(proc_status_kib("VmRSS") * 1024),
        memory_note(&engine.stats()),
    );
    Ok((engine, dir))
}

fn memory_note(stats: &EngineStats) -> String {
    format!(
        "peak so far {}; memtables {} ({} frozen), block cache {} + indexes/filters {}",
        mib(proc_status_kib("VmHWM") * 1024),
        mib(stats.memtable_bytes),
        stats.frozen_memtables,
        mib(stats.cache_bytes),
        mib(stats.cache_pinned_bytes)
    )
}

fn write_amplification(stats: &EngineStats, user_bytes: u64) -> String {
    let written = stats.log_bytes + stats.flushed_bytes + stats.compaction_bytes_written;
    format!(
        "{:.2} (log {} + flush {} + compaction {} over {} of keys+values)",
        written as f64 / user_bytes as f64,
        mib(stats.log_bytes),
        mib(stats.flushed_bytes),
        mib(stats.compaction_bytes_written),
        mib(user_bytes)
    )
}

fn gets(args: &Args, report: &mut Report, engine: &Engine) -> Result<()> {
    let threads = args.get_threads.max(1);
    for absent in [false, true] {
        let before = engine.stats();
        let per_thread = args.gets / threads;
        let started = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let engine = engine.clone();
                let keys = args.keys;
                std::thread::spawn(move || -> Result<u64> {
                    let mut rng = rand::thread_rng();
                    let mut found = 0;
                    for _ in 0..per_thread {
                        let i = if absent {
                            keys + rng.gen_range(0..keys)
                        } else {
                            rng.gen_range(0..keys)
                        };
                        if let Some(v) = engine.get(&random_key(i))? {
                            if v[..8] != i.to_le_bytes() {
                                bail!("wrong value for key {i}");
                            }
                            found += 1;
                        }
                    }
                    Ok(found)
                })
            })
            .collect();
        let mut found = 0;
        for handle in handles {
            found += handle
                .join()
                .map_err(|_| anyhow::anyhow!("reader panicked"))??;
        }
        let elapsed = started.elapsed();
        let after = engine.stats();
        let total = per_thread * threads;
        let kind = if absent { "absent" } else { "present" };
        report.row(
            "gets",
            &format!("gets/s, {threads} threads, {kind} keys"),
            format!("{:.0}", total as f64 / elapsed.as_secs_f64()),
            format!(
                "{found}/{total} found; {} runs, {} tables; cache hits {}, misses {}",
                after.runs,
                after.tables,
                after.cache_hits - before.cache_hits,
                after.cache_misses - before.cache_misses
            ),
        );
        if absent {
            let checks = after.bloom_checks - before.bloom_checks;
            let negatives = after.bloom_negatives - before.bloom_negatives;
            let blocks = after.data_block_reads - before.data_block_reads;
            let bits = options(args, FsyncPolicy::No).table.bloom_bits_per_key;
            let k = probes_for(bits);
            let fp = blocked_bloom_fp(bits, k);
            let tables_per_get = checks as f64 / total as f64;
            report.row(
                "gets",
                "absent-key gets that read a data block",
                format!("{:.3}%", 100.0 * blocks as f64 / total as f64),
                format!(
                    "predicted {:.3}% = {tables_per_get:.2} filters consulted per get x {:.3}% fp (blocked bloom, {bits} bits/key, k={k}); filter passes {}/{checks}",
                    100.0 * tables_per_get * fp,
                    100.0 * fp,
                    checks - negatives
                ),
            );
        }
    }
    Ok(())
}

/// The false-positive rate of the SSTables' blocked bloom filter (see
/// `storage::bloom`: all `k` probes of a key land in one 512-bit block, and
/// a block holds Poisson(512 / bits_per_key) keys), averaged over the number
/// of keys in a block. About 0.96% at 10 bits per key, where a classic bloom
/// filter would give 0.82%.
fn blocked_bloom_fp(bits_per_key: u32, k: u32) -> f64 {
    const BLOCK_BITS: f64 = 512.0;
    let lambda = BLOCK_BITS / f64::from(bits_per_key.max(1));
    let mut poisson = (-lambda).exp();
    let mut fp = 0.0;
    for keys in 0..2000u32 {
        if keys > 0 {
            poisson *= lambda / f64::from(keys);
        }
        let bit_unset = (1.0 - 1.0 / BLOCK_BITS).powf(f64::from(k * keys));
        fp += poisson * (1.0 - bit_unset).powi(k as i32);
    }
    fp
}

fn always(args: &Args, report: &mut Report) -> Result<()> {
    let dir = fresh_dir(args, "always")?;
    let engine = Engine::open(&dir, options(args, FsyncPolicy::Always))?;
    let writers = args.always_writers.max(1);
    let per_writer = args.always_puts / writers;
    let started = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let engine = engine.clone();
            let value_bytes = args.value_bytes;
            std::thread::spawn(move || -> Result<()> {
                let mut buf = Vec::new();
                for j in 0..per_writer {
                    let i = w * per_writer + j;
                    value(i, value_bytes, &mut buf);
                    engine.put(&random_key(i), &buf)?;
                }
                Ok(())
            })
        })
        .collect();
    for handle in handles {
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    }
    let elapsed = started.elapsed();
    let stats = engine.stats();
    let puts = per_writer * writers;
    report.row(
        "always",
        &format!("puts/s, {writers} writers, fsync always"),
        format!("{:.0}", puts as f64 / elapsed.as_secs_f64()),
        format!(
            "{puts} puts, {} fsyncs ({:.1} puts per fsync, {:.0} fsyncs/s)",
            stats.log_fsyncs,
            puts as f64 / stats.log_fsyncs.max(1) as f64,
            stats.log_fsyncs as f64 / elapsed.as_secs_f64()
        ),
    );
    engine.close()?;
    drop(engine);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The reopen phase's child: fill the memtable to just under its threshold,
/// sync, say READY, and wait to be killed.
fn child_fill(args: &Args, dir: &Path) -> Result<()> {
    let opts = options(args, FsyncPolicy::Everysec);
    let limit = opts.memtable_bytes;
    let engine = Engine::open(dir, opts)?;
    let mut buf = Vec::new();
    let mut i = 0u64;
    while engine.stats().memtable_bytes < (limit as u64).saturating_sub(64 << 10) {
        for _ in 0..1000 {
            value(i, args.value_bytes, &mut buf);
            engine.put(&random_key(i), &buf)?;
            i += 1;
        }
    }
    engine.sync()?;
    let stats = engine.stats();
    println!(
        "READY {i} {} {} {}",
        stats.memtable_bytes, stats.log_bytes, stats.flushes
    );
    std::io::stdout().flush()?;
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn reopen(args: &Args, report: &mut Report) -> Result<()> {
    let dir = fresh_dir(args, "reopen")?;
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("--child-fill")
        .arg(&dir)
        .args(["--memtable-mib", &args.memtable_mib.to_string()])
        .args(["--value-bytes", &args.value_bytes.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("child stdout")?).read_line(&mut line)?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    child.wait()?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let [keys, memtable_bytes, log_bytes, flushes] = fields[..] else {
        bail!("child did not report READY: {line:?}");
    };
    let started = Instant::now();
    let engine = Engine::open(&dir, options(args, FsyncPolicy::Everysec))?;
    let elapsed = started.elapsed();
    let mut buf = Vec::new();
    value(keys - 1, args.value_bytes, &mut buf);
    if engine.get(&random_key(keys - 1))?.as_deref() != Some(buf.as_slice()) {
        bail!("the last key written before SIGKILL is missing after reopen");
    }
    report.row(
        "reopen",
        "open after SIGKILL with a full memtable",
        format!("{:.3} s", elapsed.as_secs_f64()),
        format!(
            "{keys} keys, memtable {}, log {} replayed ({flushes} flushes before the kill)",
            mib(memtable_bytes),
            mib(log_bytes)
        ),
    );
    engine.close()?;
    drop(engine);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// One thread's share of a server-phase step: `ops` SETs (a get, then a
/// one-put batch written unsynced) or `ops` GETs, on random keys.
fn server_worker(engine: &Engine, args: &Args, sets: bool, seed: u64) -> Result<u64> {
    // SplitMix64: cheap enough not to show up in a profile of the engine.
    let mut state = seed;
    let mut next_index = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut batch = WriteBatch::new();
    let mut buf = Vec::new();
    let mut found = 0;
    for _ in 0..args.server_ops {
        let i = next_index() % args.server_keys;
        let key = server_key(i);
        let old = engine.get(&key)?;
        if let Some(old) = &old {
            if old[..8] != i.to_le_bytes() {
                bail!("wrong value for key {i}");
            }
            found += 1;
        }
        if sets {
            value(i, args.server_value_bytes, &mut buf);
            batch.clear();
            batch.put(&key, &buf);
            engine.write_unsynced(&batch)?;
        }
    }
    Ok(found)
}

fn server(args: &Args, report: &mut Report) -> Result<()> {
    let dir = fresh_dir(args, "server")?;
    let engine = Engine::open(&dir, options(args, FsyncPolicy::Everysec))?;
    let threads = args.server_threads.max(1);
    for (step, sets) in [("SET", true), ("GET", false)] {
        let before = engine.stats();
        let started = Instant::now();
        let cpu_before = process_cpu_seconds();
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let engine = engine.clone();
                let args = args.clone();
                std::thread::spawn(move || server_worker(&engine, &args, sets, t * 7 + 1))
            })
            .collect();
        let mut found = 0;
        for handle in handles {
            found += handle
                .join()
                .map_err(|_| anyhow::anyhow!("server worker panicked"))??;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = process_cpu_seconds() - cpu_before;
        let after = engine.stats();
        let total = args.server_ops * threads;
        report.row(
            "server",
            &format!("{step}/s, {threads} threads"),
            format!("{:.0}", total as f64 / elapsed),
            format!(
                "{:.2} us CPU per {step}; {found}/{total} gets found; {} runs, {} tables ({}), cache {} + {} pinned; cache hits {}, misses {}",
                1e6 * cpu / total as f64,
                after.runs,
                after.tables,
                mib(after.table_bytes),
                mib(after.cache_bytes),
                mib(after.cache_pinned_bytes),
                after.cache_hits - before.cache_hits,
                after.cache_misses - before.cache_misses
            ),
        );
    }
    engine.close()?;
    drop(engine);
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

/// User plus system CPU time of this process so far, in seconds.
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct we pass it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF is valid and `usage` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if let Some(dir) = args.child_fill.clone() {
        return child_fill(&args, &dir);
    }
    if args.quick {
        args.keys = 1_000_000;
        args.gets = 500_000;
        args.always_puts = 200_000;
    }
    let phases: Vec<&str> = args.phases.split(',').map(str::trim).collect();
    let user_bytes = args.keys * (16 + args.value_bytes as u64);
    println!(
        "storage_bench: {} keys of 16 B with {} B values ({}), memtable {} MiB, cache {} MiB, dir {}",
        args.keys,
        args.value_bytes,
        mib(user_bytes),
        args.memtable_mib,
        args.cache_mib,
        args.dir.display()
    );
    let mut report = Report { rows: Vec::new() };

    if phases.contains(&"seq") {
        let (engine, dir) = load(&args, &mut report, "seq", seq_key)?;
        engine.close()?;
        drop(engine);
        std::fs::remove_dir_all(dir)?;
    }
    if phases.contains(&"random") || phases.contains(&"gets") {
        let (engine, dir) = load(&args, &mut report, "random", random_key)?;
        let started = Instant::now();
        engine.compact()?;
        let stats = engine.stats();
        report.row(
            "random",
            "full compaction after the load",
            format!("{:.1} s", started.elapsed().as_secs_f64()),
            format!(
                "{} tables, {} on disk, {} of filters+indexes",
                stats.tables,
                mib(stats.table_bytes),
                mib(stats.table_memory_bytes)
            ),
        );
        report.row(
            "random",
            "write amplification (load + compaction)",
            format!(
                "{:.2}",
                (stats.log_bytes + stats.flushed_bytes + stats.compaction_bytes_written) as f64
                    / user_bytes as f64
            ),
            write_amplification(&stats, user_bytes),
        );
        if phases.contains(&"gets") {
            gets(&args, &mut report, &engine)?;
        }
        engine.close()?;
        drop(engine);
        std::fs::remove_dir_all(dir)?;
    }
    if phases.contains(&"always") {
        always(&args, &mut report)?;
    }
    if phases.contains(&"reopen") {
        reopen(&args, &mut report)?;
    }
    if phases.contains(&"server") {
        server(&args, &mut report)?;
    }
    report.row(
        "all",
        "peak RSS (VmHWM)",
        mib(proc_status_kib("VmHWM") * 1024),
        "of this process, through every phase above".into(),
    );
    println!("\n{}", report.markdown());
    Ok(())
}
