#!/usr/bin/env python3
"""Side-by-side benchmark: ringkv against redis-server, alternating, on one machine.

Starts a fresh `redis-server --appendonly yes --appendfsync everysec` and a fresh
`ringkv --fsync everysec`, then runs the same `redis-benchmark` command against
each, alternating which goes first, for several pairs. For every run it records
requests/s, p50 and p99 latency (from redis-benchmark's CSV) and the server's
CPU-seconds per request (utime+stime from /proc/<pid>/stat, before and after).
It prints one table per (pipeline depth, test) with each pair's ratio
ringkv/redis and the median of the ratios, and writes the same tables as
Markdown (default: docs/bench-server-latest.md).

This machine is shared and noisy: medians of paired ratios are what to read,
not any single figure. CI never runs this; it is a tool.

Usage:
  cargo build --release
  python3 tools/bench_vs_redis.py                 # 5 pairs, -P 16 -n 3000000 and -P 1 -n 200000
  python3 tools/bench_vs_redis.py --pairs 3 --quick
"""

import argparse
import csv
import io
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A free client port whose default peer port (port + 10000) is valid too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 <= 65535:
            return port


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            out = subprocess.run(
                ["redis-cli", "-p", str(port), "PING"],
                capture_output=True, text=True, timeout=2,
            ).stdout.strip()
            if out == "PONG":
                return
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not answer PING within {timeout}s")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        # The command name may contain spaces; fields after the closing paren are fixed.
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


class Server:
    def __init__(self, name: str, argv: list, port: int, workdir: str):
        self.name, self.port = name, port
        self.log = open(os.path.join(workdir, f"{name}.log"), "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir)
        wait_ready(port, self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def run_benchmark(server: Server, args: list) -> dict:
    """Runs redis-benchmark once; returns {test: {rps, p50, p99}} and the CPU cost."""
    cpu0 = cpu_seconds(server.proc.pid)
    out = subprocess.run(
        ["redis-benchmark", "-p", str(server.port), "--csv", "-q"] + args,
        capture_output=True, text=True, timeout=900,
    )
    cpu1 = cpu_seconds(server.proc.pid)
    if out.returncode != 0:
        raise RuntimeError(f"redis-benchmark against {server.name} failed: {out.stderr}")
    rows = {}
    for rec in csv.DictReader(io.StringIO(out.stdout)):
        rows[rec["test"]] = {
            "rps": float(rec["rps"]),
            "p50": float(rec["p50_latency_ms"]),
            "p99": float(rec["p99_latency_ms"]),
        }
    return {"tests": rows, "cpu": cpu1 - cpu0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--ringkv", default=os.path.join(ROOT, "target", "release", "ringkv"))
    ap.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    ap.add_argument("--ringkv-args", default="",
                    help="extra ringkv flags, e.g. '--block-cache-size 512mb' (recorded in the output)")
    ap.add_argument("--quick", action="store_true", help="smaller -n for a fast look")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench-server-latest.md"))
    opts = ap.parse_args()

    opts.ringkv = os.path.abspath(opts.ringkv)
    if not os.path.exists(opts.ringkv):
        print(f"{opts.ringkv} not found: run `cargo build --release` first", file=sys.stderr)
        return 2

    n16 = 300_000 if opts.quick else 3_000_000
    n1 = 50_000 if opts.quick else 200_000
    common = ["-t", "set,get", "-r", "1000000", "-d", "100", "-c", "50"]
    configs = [
        ("-P 16", common + ["-P", "16", "-n", str(n16)], n16),
        ("-P 1", common + ["-P", "1", "-n", str(n1)], n1),
    ]

    work = tempfile.mkdtemp(prefix="ringkv-bench-")
    redis_port, ringkv_port = free_port(), free_port()
    os.makedirs(os.path.join(work, "redis"))
    servers = {
        "redis": Server("redis", [opts.redis_server, "--port", str(redis_port), "--bind", "127.0.0.1",
                                  "--dir", os.path.join(work, "redis"), "--appendonly", "yes",
                                  "--appendfsync", "everysec", "--save", ""], redis_port, work),
        "ringkv": Server("ringkv", [opts.ringkv, "--port", str(ringkv_port), "--dir",
                                    os.path.join(work, "ringkv"), "--fsync", "everysec"] + opts.ringkv_args.split(),
                           ringkv_port, work),
    }
    md = ["# ringkv vs redis-server, side by side", "",
          f"Run: `python3 tools/bench_vs_redis.py --pairs {opts.pairs}{' --quick' if opts.quick else ''}"
          f"{' --ringkv-args ' + repr(opts.ringkv_args) if opts.ringkv_args else ''}` "
          f"on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores"
          + (f", ringkv flags `{opts.ringkv_args}`" if opts.ringkv_args else "") + ".", "",
          f"redis-benchmark {' '.join(common)} plus the pipeline depth and -n below; "
          "redis-server --appendonly yes --appendfsync everysec; ringkv --fsync everysec.", ""]
    try:
        for label, args, n in configs:
            results = {"redis": [], "ringkv": []}
            for pair in range(opts.pairs):
                order = ["redis", "ringkv"] if pair % 2 == 0 else ["ringkv", "redis"]
                for name in order:
                    r = run_benchmark(servers[name], args)
                    results[name].append(r)
                    got = ", ".join(f"{t} {v['rps']:.0f}/s" for t, v in r["tests"].items())
                    print(f"[{label}] pair {pair + 1} {name}: {got}, cpu {r['cpu']:.2f}s", flush=True)
            for test in ("SET", "GET"):
                header = f"## {test} {label} -n {n}"
                lines = [header, "",
                         "| pair | redis rps | ringkv rps | ratio | redis p50/p99 ms | ringkv p50/p99 ms |",
                         "|---:|---:|---:|---:|---:|---:|"]
                ratios = []
                for i in range(opts.pairs):
                    a = results["redis"][i]["tests"].get(test)
                    b = results["ringkv"][i]["tests"].get(test)
                    if not a or not b:
                        continue
                    ratio = b["rps"] / a["rps"]
                    ratios.append(ratio)
                    lines.append(f"| {i + 1} | {a['rps']:.0f} | {b['rps']:.0f} | {ratio:.2f} | "
                                 f"{a['p50']:.3f}/{a['p99']:.3f} | {b['p50']:.3f}/{b['p99']:.3f} |")

                def med(side, key):
                    return statistics.median(r["tests"][test][key] for r in results[side] if test in r["tests"])

                lines.append(f"| **median** | {med('redis', 'rps'):.0f} | {med('ringkv', 'rps'):.0f} | "
                             f"**{statistics.median(ratios):.2f}** | {med('redis', 'p50'):.3f}/{med('redis', 'p99'):.3f} | "
                             f"{med('ringkv', 'p50'):.3f}/{med('ringkv', 'p99'):.3f} |")
                lines.append("")
                md.extend(lines)
                print("\n".join(lines), flush=True)
            # CPU per request covers both tests of a run (SET and GET, n each).
            cpu = {side: statistics.median(r["cpu"] for r in results[side]) / (2 * n) * 1e6
                   for side in results}
            line = (f"Server CPU per request at {label} (median over pairs): redis {cpu['redis']:.2f} us, "
                    f"ringkv {cpu['ringkv']:.2f} us, ratio {cpu['ringkv'] / cpu['redis']:.2f}")
            md.extend([line, ""])
            print(line, flush=True)

        # The other redis-benchmark tests that apply to a string store: show that they run.
        extra = run_benchmark(servers["ringkv"], ["-t", "ping_inline,ping_mbulk,incr,mset", "-n", "100000", "-c", "50"])
        md.extend(["## Other redis-benchmark tests against ringkv (-n 100000 -c 50)", "",
                   "| test | rps | p50 ms | p99 ms |", "|---|---:|---:|---:|"])
        for t, v in extra["tests"].items():
            md.append(f"| {t} | {v['rps']:.0f} | {v['p50']:.3f} | {v['p99']:.3f} |")
        md.append("")
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(work, ignore_errors=True)

    os.makedirs(os.path.dirname(opts.out), exist_ok=True)
    with open(opts.out, "w") as f:
        f.write("\n".join(md))
    print(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
