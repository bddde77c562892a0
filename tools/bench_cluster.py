#!/usr/bin/env python3
"""Side-by-side benchmark: a local 3-node ringkv cluster against a single ringkv node.

Starts a fresh 3-node cluster (N=3, R=2, W=2, the defaults) and a fresh single
node, all `--fsync everysec`, on this machine, then runs the same
`redis-benchmark` command against node 1 of the cluster and against the single
node, alternating which goes first, for several pairs. For every run it records
requests/s, p50 and p99 latency and the CPU-seconds every server process used
per request. It prints one table per (pipeline depth, test) with each pair's
ratio cluster/single and the median of the ratios, then measures the internode
traffic of a SET-only run (bytes every node sent to its peers, per client
write, against the size of the client's request), and writes the same tables
as Markdown (default: docs/bench-cluster-latest.md).

The cluster's three processes share this machine's cores with the benchmark
client and with each other: each write does three replicas' work on the same
cores the single node has to itself. The issue's targets are cluster
throughput at -P 16 of at least 1/3 of the single node, p99 at -P 1 -c 50
under 3 ms, and internode bytes per client write under 3x the request size
plus a small constant.

This machine is shared and noisy: medians of paired ratios are what to read.
CI never runs this; it is a tool.

Usage:
  cargo build --release
  python3 tools/bench_cluster.py                 # 5 pairs
  python3 tools/bench_cluster.py --pairs 3 --quick
"""

import argparse
import csv
import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from bench_vs_redis import cpu_seconds, free_port, wait_ready  # noqa: E402


class Node:
    def __init__(self, name: str, binary: str, port: int, workdir: str, extra: list):
        self.name, self.port = name, port
        self.peer_port = port + 10000
        self.log = open(os.path.join(workdir, f"{name}.log"), "w")
        argv = [binary, "--port", str(port), "--dir", os.path.join(workdir, name),
                "--fsync", "everysec"] + extra
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir)
        wait_ready(port, self.proc)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def info(self, section: str) -> dict:
        out = subprocess.run(["redis-cli", "-p", str(self.port), "INFO", section],
                             capture_output=True, text=True, timeout=10).stdout
        fields = {}
        for line in out.splitlines():
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                fields[k.strip()] = v.strip()
        return fields

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def wait_cluster(nodes: list, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(n.info("cluster").get("cluster_members_up") == str(len(nodes)) for n in nodes):
            return
        time.sleep(0.2)
    raise RuntimeError("the cluster did not converge")


def run_benchmark(target: Node, procs: list, args: list) -> dict:
    cpu0 = [p.cpu() for p in procs]
    out = subprocess.run(["redis-benchmark", "-p", str(target.port), "--csv", "-q"] + args,
                         capture_output=True, text=True, timeout=1800)
    cpu1 = [p.cpu() for p in procs]
    if out.returncode != 0:
        raise RuntimeError(f"redis-benchmark against {target.name} failed: {out.stderr}")
    rows = {}
    for rec in csv.DictReader(io.StringIO(out.stdout)):
        rows[rec["test"]] = {"rps": float(rec["rps"]), "p50": float(rec["p50_latency_ms"]),
                             "p99": float(rec["p99_latency_ms"])}
    return {"tests": rows, "cpu": sum(b - a for a, b in zip(cpu0, cpu1))}


def request_bytes(key_len: int, value_len: int) -> int:
    """Bytes of `SET <key> <value>` as redis-benchmark sends it (RESP multibulk)."""
    def bulk(n):
        return len(f"${n}\r\n") + n + 2
    return len("*3\r\n") + bulk(3) + bulk(key_len) + bulk(value_len)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--ringkv", default=os.path.join(ROOT, "target", "release", "ringkv"))
    ap.add_argument("--quick", action="store_true", help="smaller -n for a fast look")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench-cluster-latest.md"))
    opts = ap.parse_args()
    binary = os.path.abspath(opts.ringkv)
    if not os.path.exists(binary):
        print(f"{binary} not found: run `cargo build --release` first", file=sys.stderr)
        return 2

    n16 = 200_000 if opts.quick else 1_000_000
    n1 = 30_000 if opts.quick else 100_000
    common = ["-t", "set,get", "-r", "1000000", "-d", "100", "-c", "50"]
    configs = [
        ("-P 16", common + ["-P", "16", "-n", str(n16)], n16),
        ("-P 1", common + ["-P", "1", "-n", str(n1)], n1),
    ]

    work = tempfile.mkdtemp(prefix="ringkv-cluster-bench-")
    ports = [free_port() for _ in range(4)]
    nodes = []
    single = None
    try:
        first = Node("node1", binary, ports[0], work, [])
        nodes.append(first)
        for i in (2, 3):
            nodes.append(Node(f"node{i}", binary, ports[i - 1], work, ["--join", f"127.0.0.1:{ports[0]}"]))
        wait_cluster(nodes)
        single = Node("single", binary, ports[3], work, [])
        sides = {"cluster": (first, nodes), "single": (single, [single])}

        md = ["# A 3-node ringkv cluster vs a single ringkv node, side by side", "",
              f"Run: `python3 tools/bench_cluster.py --pairs {opts.pairs}{' --quick' if opts.quick else ''}` "
              f"on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores. "
              "Cluster: 3 local processes, N=3 R=2 W=2, clients on node 1; single: one process. "
              "All `--fsync everysec`.", "",
              f"redis-benchmark {' '.join(common)} plus the pipeline depth and -n below. "
              "CPU is the server processes' user+system time per request (all three nodes for the cluster).", ""]
        for label, args, n in configs:
            results = {"cluster": [], "single": []}
            for pair in range(opts.pairs):
                order = ["single", "cluster"] if pair % 2 == 0 else ["cluster", "single"]
                for side in order:
                    target, procs = sides[side]
                    r = run_benchmark(target, procs, args)
                    results[side].append(r)
                    got = ", ".join(f"{t} {v['rps']:.0f}/s p99 {v['p99']:.2f} ms" for t, v in r["tests"].items())
                    print(f"[{label}] pair {pair + 1} {side}: {got}, cpu {r['cpu']:.2f}s", flush=True)
            for test in ("SET", "GET"):
                lines = [f"## {test} {label} -n {n}", "",
                         "| pair | single rps | cluster rps | ratio | single p50/p99 ms | cluster p50/p99 ms |",
                         "|---:|---:|---:|---:|---:|---:|"]
                ratios = []
                for i in range(opts.pairs):
                    a = results["single"][i]["tests"].get(test)
                    b = results["cluster"][i]["tests"].get(test)
                    if not a or not b:
                        continue
                    ratios.append(b["rps"] / a["rps"])
                    lines.append(f"| {i + 1} | {a['rps']:.0f} | {b['rps']:.0f} | {ratios[-1]:.2f} | "
                                 f"{a['p50']:.3f}/{a['p99']:.3f} | {b['p50']:.3f}/{b['p99']:.3f} |")

                def med(side, key):
                    return statistics.median(r["tests"][test][key] for r in results[side] if test in r["tests"])

                lines.append(f"| **median** | {med('single', 'rps'):.0f} | {med('cluster', 'rps'):.0f} | "
                             f"**{statistics.median(ratios):.2f}** | {med('single', 'p50'):.3f}/{med('single', 'p99'):.3f} | "
                             f"{med('cluster', 'p50'):.3f}/{med('cluster', 'p99'):.3f} |")
                lines.append("")
                md.extend(lines)
                print("\n".join(lines), flush=True)
            cpu = {side: statistics.median(r["cpu"] for r in results[side]) / (2 * n) * 1e6 for side in results}
            line = (f"Server CPU per request at {label} (median over pairs, SET and GET together): "
                    f"single {cpu['single']:.1f} us, cluster (3 processes) {cpu['cluster']:.1f} us, "
                    f"ratio {cpu['cluster'] / cpu['single']:.2f}")
            md.extend([line, ""])
            print(line, flush=True)

        # Internode traffic per client write.
        writes = 100_000
        before = [int(nd.info("cluster").get("peer_bytes_sent", 0)) for nd in nodes]
        msgs0 = [int(nd.info("cluster").get("peer_messages_sent", 0)) for nd in nodes]
        run_benchmark(first, nodes, ["-t", "set", "-r", "1000000", "-d", "100", "-c", "50", "-P", "16",
                                     "-n", str(writes)])
        after = [int(nd.info("cluster").get("peer_bytes_sent", 0)) for nd in nodes]
        msgs1 = [int(nd.info("cluster").get("peer_messages_sent", 0)) for nd in nodes]
        sent = sum(after) - sum(before)
        per_write = sent / writes
        request = request_bytes(len("key:000000000000"), 100)
        md.extend(["## Internode traffic per client write", "",
                   f"SET -P 16, {writes} writes of 100-byte values through node 1 (request {request} bytes "
                   "as sent by redis-benchmark). Bytes sent by all nodes to peers (frames, both directions, "
                   "gossip included), per write:", "",
                   "| bytes/write | messages/write | request bytes | ratio |", "|---:|---:|---:|---:|",
                   f"| {per_write:.0f} | {(sum(msgs1) - sum(msgs0)) / writes:.2f} | {request} | "
                   f"{per_write / request:.2f} |", ""])
        print("\n".join(md[-6:]), flush=True)
    finally:
        for nd in nodes + ([single] if single else []):
            nd.stop()
        shutil.rmtree(work, ignore_errors=True)

    os.makedirs(os.path.dirname(opts.out), exist_ok=True)
    with open(opts.out, "w") as f:
        f.write("\n".join(md))
    print(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
