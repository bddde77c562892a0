//! `INFO [section ...]`: Redis' `# Section\r\nkey:value\r\n` text, with the
//! sections clients and dashboards read (server, clients, memory,
//! persistence, stats, replication, cpu, keyspace) plus `ringkv`, the engine's
//! and the version layer's own counters.
//!
//! `used_memory` is the process's resident set size from `/proc/self/statm`:
//! ringkv uses the system allocator and does not count its allocations, and
//! RSS is what an operator's memory limit acts on. `INFO` with no argument,
//! `default`, `all` and `everything` all give every section (ringkv has no
//! expensive sections to leave out).

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::protocol::Reply;
use crate::server::dispatch::Ctx;
use crate::server::{Shared, REDIS_COMPAT_VERSION};

/// Every section, in the order `INFO` prints them.
const SECTIONS: &[&str] = &[
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "keyspace",
    "cluster",
    "ringkv",
];

/// `INFO [section ...]`.
pub fn info(ctx: &mut Ctx<'_>, args: &[Bytes]) -> Reply {
    let wants_all = args.len() == 1
        || args[1..].iter().any(|a| {
            ["all", "everything", "default"]
                .iter()
                .any(|k| a.eq_ignore_ascii_case(k.as_bytes()))
        });
    let mut out = String::with_capacity(4096);
    for name in SECTIONS {
        if wants_all
            || args[1..]
                .iter()
                .any(|a| a.eq_ignore_ascii_case(name.as_bytes()))
        {
            if !out.is_empty() {
                out.push_str("\r\n");
            }
            section(ctx.shared, name, &mut out);
        }
    }
    Reply::Verbatim(out)
}

/// Appends one section to `out`.
fn section(s: &Shared, name: &str, out: &mut String) {
    macro_rules! line {
        ($($arg:tt)*) => {{ let _ = write!(out, $($arg)*); out.push_str("\r\n"); }};
    }
    match name {
        "server" => {
            let uptime = s.started.elapsed().as_secs();
            let now_us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros();
            line!("# Server");
            line!("redis_version:{REDIS_COMPAT_VERSION}");
            line!("ringkv_version:{}", env!("CARGO_PKG_VERSION"));
            line!("redis_mode:standalone");
            line!("os:{} {}", std::env::consts::OS, std::env::consts::ARCH);
            line!("arch_bits:{}", usize::BITS);
            line!("multiplexing_api:epoll");
            line!("process_id:{}", std::process::id());
            line!("run_id:{}", s.run_id);
            line!("tcp_port:{}", s.local_addr.port());
            line!("server_time_usec:{now_us}");
            line!("uptime_in_seconds:{uptime}");
            line!("uptime_in_days:{}", uptime / 86_400);
            line!(
                "executable:{}",
                std::env::current_exe()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
        }
        "clients" => {
            line!("# Clients");
            line!("connected_clients:{}", s.clients.len());
            line!("maxclients:{}", s.live.maxclients());
            line!(
                "client_output_buffer_limit:{}",
                s.live.output_buffer_limit()
            );
            line!("blocked_clients:0");
        }
        "memory" => {
            let rss = resident_bytes();
            let peak = s.stats.peak_rss_bytes.fetch_max(rss, Relaxed).max(rss);
            let total = total_system_memory();
            line!("# Memory");
            line!("used_memory:{rss}");
            line!("used_memory_human:{}", human(rss));
            line!("used_memory_rss:{rss}");
            line!("used_memory_rss_human:{}", human(rss));
            line!("used_memory_peak:{peak}");
            line!("used_memory_peak_human:{}", human(peak));
            line!("total_system_memory:{total}");
            line!("total_system_memory_human:{}", human(total));
            line!("maxmemory:0");
            line!("maxmemory_human:0B");
            line!("maxmemory_policy:noeviction");
            line!("mem_allocator:libc");
        }
        "persistence" => {
            line!("# Persistence");
            line!("loading:0");
            line!("async_loading:0");
            line!("rdb_bgsave_in_progress:0");
            line!("rdb_last_bgsave_status:ok");
            line!("aof_enabled:1");
            line!("aof_rewrite_in_progress:0");
            line!("aof_last_write_status:ok");
            line!("appendfsync:{}", s.live.fsync());
        }
        "stats" => {
            let ks = s.keyspace.info();
            line!("# Stats");
            line!(
                "total_connections_received:{}",
                s.stats.total_connections_received.load(Relaxed)
            );
            line!(
                "total_commands_processed:{}",
                s.stats.total_commands_processed.load(Relaxed)
            );
            line!(
                "instantaneous_ops_per_sec:{}",
                s.stats.instantaneous_ops_per_sec()
            );
            line!(
                "total_net_input_bytes:{}",
                s.stats.total_net_input_bytes.load(Relaxed)
            );
            line!(
                "total_net_output_bytes:{}",
                s.stats.total_net_output_bytes.load(Relaxed)
            );
            line!(
                "rejected_connections:{}",
                s.stats.rejected_connections.load(Relaxed)
            );
            line!("expired_keys:{}", ks.expired_keys);
            line!("evicted_keys:0");
            line!("keyspace_hits:{}", ks.keyspace_hits);
            line!("keyspace_misses:{}", ks.keyspace_misses);
        }
        "replication" => {
            // Replication is the cluster's business (quorums, not a
            // primary/replica pair); a lone node answers as Redis' primary.
            line!("# Replication");
            line!("role:master");
            line!("connected_slaves:0");
        }
        "cpu" => {
            let (sys, user) = cpu_seconds();
            line!("# CPU");
            line!("used_cpu_sys:{sys:.6}");
            line!("used_cpu_user:{user:.6}");
        }
        "keyspace" => {
            let ks = s.keyspace.info();
            line!("# Keyspace");
            if ks.keys > 0 {
                line!("db0:keys={},expires={},avg_ttl=0", ks.keys, ks.expires);
            }
        }
        "cluster" => {
            s.cluster.info_section(out);
            s.data.info_section(out);
            s.anti_entropy.info_section(out);
            s.rebalance.info_section(out);
        }
        "ringkv" => {
            let ks = s.keyspace.info();
            let e = &ks.engine;
            line!("# Ringkv");
            line!("ringkv_version:{}", env!("CARGO_PKG_VERSION"));
            line!("actor_id:{}", ks.actor);
            line!("partitions:{}", ks.partitions);
            line!("fsync_policy:{}", s.live.fsync());
            line!("data_dir:{}", s.config.dir.display());
            line!("keys_with_siblings:{}", ks.keys_with_siblings);
            line!("engine_puts:{}", e.puts);
            line!("engine_deletes:{}", e.deletes);
            line!("engine_gets:{}", e.gets);
            line!("engine_write_batches:{}", e.write_batches);
            line!("engine_scans:{}", e.scans);
            line!("log_fsyncs:{}", e.log_fsyncs);
            line!("log_bytes:{}", e.log_bytes);
            line!("last_seq:{}", e.last_seq);
            line!("synced_seq:{}", e.synced_seq);
            line!("memtable_bytes:{}", e.memtable_bytes);
            line!("frozen_memtables:{}", e.frozen_memtables);
            line!("flushes:{}", e.flushes);
            line!("flushed_bytes:{}", e.flushed_bytes);
            line!("compactions:{}", e.compactions);
            line!("compaction_bytes_read:{}", e.compaction_bytes_read);
            line!("compaction_bytes_written:{}", e.compaction_bytes_written);
            line!("sstables:{}", e.tables);
            line!("sorted_runs:{}", e.runs);
            line!("sstable_bytes:{}", e.table_bytes);
            line!("sstable_memory_bytes:{}", e.table_memory_bytes);
            line!("write_stalls:{}", e.write_stalls);
            line!("write_stall_micros:{}", e.write_stall_micros);
            line!("bloom_checks:{}", e.bloom_checks);
            line!("bloom_negatives:{}", e.bloom_negatives);
            line!("data_block_reads:{}", e.data_block_reads);
            line!("block_disk_reads:{}", e.block_disk_reads);
            line!("block_cache_hits:{}", e.cache_hits);
            line!("block_cache_misses:{}", e.cache_misses);
            line!("block_cache_bytes:{}", e.cache_bytes);
        }
        _ => {}
    }
}

/// Resident set size in bytes (0 if `/proc` is unavailable).
fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// `MemTotal` from `/proc/meminfo`, in bytes (0 if unavailable).
fn total_system_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// (system, user) CPU seconds used by the process.
fn cpu_seconds() -> (f64, f64) {
    // SAFETY: getrusage writes into the zeroed struct we own; RUSAGE_SELF is valid.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut u) != 0 {
            return (0.0, 0.0);
        }
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_stime), secs(usage.ru_utime))
}

/// Redis' `bytesToHuman`: `1.09M`, `512.00K`, `17B`.
fn human(n: u64) -> String {
    let f = n as f64;
    const K: f64 = 1024.0;
    if f < K {
        format!("{n}B")
    } else if f < K * K {
        format!("{:.2}K", f / K)
    } else if f < K * K * K {
        format!("{:.2}M", f / (K * K))
    } else if f < K * K * K * K {
        format!("{:.2}G", f / (K * K * K))
    } else {
        format!("{:.2}T", f / (K * K * K * K))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes_read_like_redis() {
        assert_eq!(human(17), "17B");
        assert_eq!(human(1_139_176), "1.09M");
        assert_eq!(human(512 * 1024), "512.00K");
    }

    #[test]
    fn resident_memory_is_measured() {
        assert!(resident_bytes() > 0);
    }
}
