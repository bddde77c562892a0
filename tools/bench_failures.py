#!/usr/bin/env python3
"""Failure benchmarks: hinted handoff replay and a node join, on real processes.

Two measurements from the cluster issue, each on a fresh local cluster of
`target/release/ringkv` processes on free 127.0.0.1 ports:

1. **Hinted handoff replay.** Four nodes, N=3 R=2 W=2 (with three nodes and
   N=3 there is no fallback to hold a hint), short gossip timings so a death
   is noticed in seconds. After a quiet latency window, node 4 is SIGKILLed;
   once the survivors see it `down`, distinct keys are written through them
   until exactly `--hints` of the keys written fall in node 4's partitions
   (each such write leaves one hint on the fallback; `INFO cluster`
   `hints_pending` and `CLUSTER HINTS` are checked on every survivor). Then,
   with a light client load running against survivor node 1, node 4 is
   restarted on the same ports and data directory, and the script times the
   replay until `hints_pending` is 0 on every node. It reports the replay
   rate against `--handoff-bytes-per-sec` (run at each of `--handoff-rates`,
   default 4 MiB/s and 0 = unlimited, `--rounds` times each, every run on a
   fresh cluster), the client
   p99 during the replay against the quiet p99 (target: at most 2x), and
   checks that node 4 then holds every key it owns (node-local `SCAN` and
   `DBSIZE`) and serves a sample of them with the right values.

2. **Join.** Three nodes, N=3 (the default, `--join-replicas`), so every node
   owns every partition; a fourth node then owns 3/4 of the partitions
   (bounded loads: 192 of 256 placements each). The cluster is loaded with
   enough distinct keys (`--join-value-bytes` values) that the joiner's share
   is about `--join-bytes`; after a quiet window, node 4 starts with `--join`
   while the light load runs, and the script times the rebalance until
   every node reports `rebalance_settled:1`, `rebalance_partitions_pending:0`,
   no push owed, and `rebalance_partitions_held` equal to the partitions it
   owns. It reports the bytes streamed (`rebalance_bytes_sent`, counted once
   per target: a losing owner streams each partition to *every* current
   owner, so about N times the joiner's share goes over the wire), the
   throughput against `--stream-bytes-per-sec`, the client p99 during the
   move against quiet, and checks every node's `DBSIZE` against the keys it
   owns after the move and a sample of values read through the new node.

The light load is a separate Python process: `--load-conns` connections to
node 1, each paced at `--load-rate / --load-conns` requests per second, half
`GET`, half `SET` of 100-byte values over `--lat-keys` preloaded keys, each
request timed from send to reply (service time, as redis-benchmark does).
p99 is taken over the samples in each window. Anti-entropy is off by
default (`--anti-entropy-ms 0`) so that what is measured is handoff and
streaming alone (with it on, anti-entropy also refills a returning or
joining node at its own 8 MiB/s).

This machine is shared and has few cores: four servers, the load and the
loader share them. Before each phase the script waits (up to 30 min) until
no `bench_cluster.py` or `cargo test` is running. CI never runs this.

Usage:
  cargo build --release
  python3 tools/bench_failures.py --quick     # a smoke run, ~2 min
  python3 tools/bench_failures.py             # 100k hints (x2 rates x2 rounds), 1 GiB join, ~10 min
"""

import argparse
import hashlib
import math
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from bench_vs_redis import cpu_seconds, free_port, wait_ready  # noqa: E402

MIB = 1 << 20
HANDOFF_GOSSIP = ["--gossip-interval-ms", "200", "--gossip-suspect-ms", "2000", "--gossip-down-ms", "4000"]
LAT_VALUE_BYTES = 100


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- RESP


class RespError(Exception):
    pass


def encode(*args) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    """A minimal blocking RESP client: calls and pipelines."""

    def __init__(self, port: int, timeout: float = 60.0):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _fill(self) -> None:
        if self.pos > 65536 and self.pos > len(self.buf) // 2:
            del self.buf[:self.pos]
            self.pos = 0
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError(f"connection to port {self.port} closed")
        self.buf += data

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                line = bytes(self.buf[self.pos:i])
                self.pos = i + 2
                return line
            self._fill()

    def _exact(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n + 2:
            self._fill()
        data = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n + 2
        return data

    def read(self):
        """One reply; errors come back as RespError instances (not raised)."""
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            return RespError(rest.decode(errors="replace"))
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RespError(f"unexpected reply type {line[:20]!r}")

    def call(self, *args):
        self.sock.sendall(encode(*args))
        r = self.read()
        if isinstance(r, RespError):
            raise r
        return r

    def pipeline(self, payload: bytes, count: int) -> list:
        self.sock.sendall(payload)
        return [self.read() for _ in range(count)]


def parse_info(text) -> dict:
    if isinstance(text, bytes):
        text = text.decode()
    fields = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            fields[k.strip()] = v.strip()
    return fields


# --------------------------------------------------------------------------- nodes


class Node:
    def __init__(self, name: str, binary: str, port: int, workdir: str, extra: list):
        self.name, self.port, self.workdir = name, port, workdir
        self.dir = os.path.join(workdir, name)
        self.argv = [binary, "--port", str(port), "--dir", self.dir] + extra
        self.proc = None
        self.logf = None
        self.mon = None
        self.id = None

    def start(self, wait: bool = True) -> None:
        self.logf = open(os.path.join(self.workdir, f"{self.name}.log"), "a")
        self.proc = subprocess.Popen(self.argv, stdout=self.logf, stderr=subprocess.STDOUT, cwd=self.workdir)
        if wait:
            wait_ready(self.port, self.proc, timeout=120)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _mon(self) -> Conn:
        if self.mon is None:
            self.mon = Conn(self.port, timeout=30)
        return self.mon

    def call(self, *args):
        try:
            return self._mon().call(*args)
        except (OSError, ConnectionError):
            if self.mon:
                self.mon.close()
            self.mon = None
            raise

    def info(self, section: str) -> dict:
        return parse_info(self.call("INFO", section))

    def cluster_nodes(self) -> dict:
        """id -> {addr, status, partitions, myself}"""
        rows = {}
        for line in self.call("CLUSTER", "NODES").decode().splitlines():
            parts = line.split()
            if len(parts) < 4:
                continue
            kv = dict(p.split("=", 1) for p in parts[4:] if "=" in p)
            rows[parts[0]] = {"addr": parts[1], "status": parts[3],
                              "partitions": int(kv.get("partitions", 0)), "myself": "myself" in parts}
        return rows

    def learn_id(self) -> str:
        for nid, row in self.cluster_nodes().items():
            if row["myself"]:
                self.id = nid
        return self.id

    def cpu(self) -> float:
        try:
            return cpu_seconds(self.proc.pid)
        except (OSError, IndexError):
            return 0.0

    def _close_mon(self) -> None:
        if self.mon:
            self.mon.close()
            self.mon = None

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        self._close_mon()
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        if self.logf:
            self.logf.close()
            self.logf = None

    def stop(self) -> None:
        self._close_mon()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.logf:
            self.logf.close()
            self.logf = None


def start_cluster(binary: str, work: str, count: int, extra: list) -> list:
    ports = [free_port() for _ in range(count)]
    while len(set(ports)) < count:
        ports = [free_port() for _ in range(count)]
    nodes = [Node("node1", binary, ports[0], work, extra)]
    nodes[0].start()
    for i in range(1, count):
        nd = Node(f"node{i + 1}", binary, ports[i], work, extra + ["--join", f"127.0.0.1:{ports[0]}"])
        nd.start()
        nodes.append(nd)
    wait_members(nodes, count)
    for nd in nodes:
        nd.learn_id()
    return nodes


def wait_members(nodes: list, up: int, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(nd.info("cluster").get("cluster_members_up") == str(up) for nd in nodes):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the cluster did not reach {up} members up")


def ring_owners(node: Node, q: int) -> dict:
    """partition -> list of short owner ids, from CLUSTER PARTITIONS."""
    owners = {}
    for row in node.call("CLUSTER", "PARTITIONS"):
        rng, ids = row.decode().split()
        a, _, b = rng.partition("-")
        for p in range(int(a), int(b or a) + 1):
            owners[p] = ids.split(",")
    assert len(owners) == q, f"CLUSTER PARTITIONS covered {len(owners)} of {q} partitions"
    return owners


def partition_of(key: bytes, q: int) -> int:
    h = int.from_bytes(hashlib.sha256(key).digest()[:8], "big")
    return min(h // ((1 << 64) // q), q - 1)


# Other heavy work on this machine that would skew the measurements.
BUSY_PATTERNS = ("bench_cluster.py", "cargo test", "rustc ", "clippy-driver")


def busy_now() -> list:
    return [pat.strip() for pat in BUSY_PATTERNS
            if subprocess.run(["pgrep", "-f", pat], capture_output=True).returncode == 0]


class BusyWatch:
    """Notes, every 2 s, which of BUSY_PATTERNS ran while a phase was measured."""

    def __init__(self):
        self.seen = set()
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_ev.wait(2.0):
            self.seen.update(busy_now())

    def stop(self) -> str:
        self.stop_ev.set()
        self.thread.join()
        return ("other work ran meanwhile: " + ", ".join(sorted(self.seen))) if self.seen else "nothing else heavy ran meanwhile"


def wait_cpu_free(label: str) -> str:
    """Waits (polling every 20 s, up to 30 min) until none of BUSY_PATTERNS runs."""
    start = time.time()
    announced = False
    while True:
        busy = busy_now()
        if not busy:
            waited = time.time() - start
            return f"waited {waited:.0f} s for {label}" if waited > 1 else "machine free"
        if time.time() - start > 1800:
            log(f"still busy after 30 min ({', '.join(busy)}); running {label} anyway")
            return f"ran alongside {', '.join(busy)} after a 30 min wait"
        if not announced:
            log(f"waiting for {', '.join(busy)} to finish before {label}")
            announced = True
        time.sleep(20)


def wait_idle(nodes: list, limit: float = 180.0, threshold: float = 0.15) -> float:
    """Waits until the servers' total CPU use is under `threshold` cores for 2 s in a row."""
    start = time.time()
    calm = 0
    prev = sum(nd.cpu() for nd in nodes)
    while time.time() - start < limit:
        time.sleep(1.0)
        cur = sum(nd.cpu() for nd in nodes)
        calm = calm + 1 if cur - prev < threshold else 0
        prev = cur
        if calm >= 2:
            break
    return time.time() - start


def data_bytes(node: Node) -> int:
    f = node.info("ringkv")
    return int(f.get("sstable_bytes", 0)) + int(f.get("memtable_bytes", 0))


def du(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for fn in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, fn))
            except OSError:
                pass
    return total


# --------------------------------------------------------------------------- data


BASE = random.Random(20240601).randbytes(1 << 16)


def key_of(prefix: str, i: int) -> bytes:
    return b"%s%010d" % (prefix.encode(), i)


def value_of(key: bytes, size: int) -> bytes:
    head = key + b":"
    if size <= len(head):
        return head[:size]
    n = size - len(head)
    if n <= len(BASE):
        return head + BASE[:n]
    return head + (BASE * (1 + n // len(BASE)))[:n]


def load_keys(ports: list, keys: list, size: int, conns: int = 4, batch_bytes: int = 256 << 10) -> dict:
    """SETs every key (value_of) through `conns` pipelined connections spread over `ports`."""
    batch = max(1, min(256, batch_bytes // (size + 64)))
    shards = [keys[i::conns] for i in range(conns)]
    errors = [0] * conns
    samples = [None] * conns
    failures = []

    def worker(t: int) -> None:
        try:
            c = Conn(ports[t % len(ports)], timeout=120)
            mine = shards[t]
            for j in range(0, len(mine), batch):
                chunk = mine[j:j + batch]
                payload = b"".join(encode(b"SET", k, value_of(k, size)) for k in chunk)
                for r in c.pipeline(payload, len(chunk)):
                    if isinstance(r, RespError):
                        errors[t] += 1
                        if samples[t] is None:
                            samples[t] = str(r)
            c.close()
        except Exception as e:  # noqa: BLE001
            failures.append(repr(e))

    t0 = time.time()
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(conns)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    secs = time.time() - t0
    if failures:
        raise RuntimeError(f"loader failed: {failures[0]}")
    return {"keys": len(keys), "errors": sum(errors), "error_sample": next((s for s in samples if s), None),
            "secs": secs, "bytes": len(keys) * size}


def verify_sample(node: Node, keys: list, size: int, sample: int) -> dict:
    """GETs a random sample through `node`; counts right, wrong and missing values."""
    pick = random.Random(7).sample(keys, min(sample, len(keys)))
    c = Conn(node.port)
    right = wrong = missing = errors = 0
    for j in range(0, len(pick), 200):
        chunk = pick[j:j + 200]
        replies = c.pipeline(b"".join(encode(b"GET", k) for k in chunk), len(chunk))
        for k, r in zip(chunk, replies):
            if isinstance(r, RespError):
                errors += 1
            elif r is None:
                missing += 1
            elif isinstance(r, list):  # siblings come back as several values
                wrong += 1
            elif r == value_of(k, size):
                right += 1
            else:
                wrong += 1
    c.close()
    return {"sampled": len(pick), "right": right, "wrong": wrong, "missing": missing, "errors": errors}


def local_keys(node: Node, prefix: str) -> set:
    """The keys with `prefix` this node holds (SCAN is node-local in a cluster)."""
    found = set()
    cursor = b"0"
    c = Conn(node.port)
    while True:
        cursor, batch = c.call("SCAN", cursor, "MATCH", prefix + "*", "COUNT", "10000")
        found.update(batch)
        if cursor in (b"0", "0"):
            break
    c.close()
    return found


# --------------------------------------------------------------------------- latency load


def _load_proc(port: int, rate: float, conns: int, lat_keys: int, stop, out) -> None:
    samples = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        rnd = random.Random(1000 + t)
        interval = conns / rate
        mine = []
        c = None
        nxt = time.perf_counter()
        while not stop.is_set():
            nxt += interval
            delay = nxt - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                nxt = time.perf_counter()  # behind schedule: do not burst to catch up
            i = rnd.randrange(lat_keys)
            k = key_of("lat:", i)
            is_set = rnd.random() < 0.5
            payload = encode(b"SET", k, value_of(k, LAT_VALUE_BYTES)) if is_set else encode(b"GET", k)
            wall = time.time()
            t0 = time.perf_counter()
            err = None
            try:
                if c is None:
                    c = Conn(port, timeout=10)
                c.sock.sendall(payload)
                r = c.read()
                if isinstance(r, RespError):
                    err = ("SET " if is_set else "GET ") + str(r)[:160]
            except (OSError, ConnectionError) as e:
                err = f"connection: {e!r}"[:160]
                if c:
                    c.close()
                c = None
            mine.append((wall, time.perf_counter() - t0, is_set, err))
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(conns)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out.send(samples)
    out.close()


class Load:
    """The light client load, in its own process; samples come back at stop()."""

    def __init__(self, port: int, opts):
        ctx = mp.get_context("fork")
        self.stop_ev = ctx.Event()
        self.rx, tx = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_load_proc,
                                args=(port, opts.load_rate, opts.load_conns, opts.lat_keys, self.stop_ev, tx))
        self.proc.start()
        tx.close()
        self.samples = None

    def stop(self) -> list:
        self.stop_ev.set()
        self.samples = self.rx.recv()
        self.proc.join(timeout=30)
        return self.samples


def window_stats(samples: list, t0: float, t1: float) -> dict:
    # Failed requests (fast UNAVAILABLE answers) are counted, not timed.
    lat = sorted(s[1] * 1000 for s in samples if t0 <= s[0] < t1 and not s[3])
    kinds = {}
    err_at = []
    for s in samples:
        if t0 <= s[0] < t1 and s[3]:
            kind = re.sub(r"retrying in \d+ ms", "retrying in N ms", s[3])
            kinds[kind] = kinds.get(kind, 0) + 1
            err_at.append(s[0] - t0)
    errs = sum(kinds.values())
    # When the errors came, in seconds from the window's start.
    span = (min(err_at), max(err_at)) if err_at else None
    if not lat:
        return {"n": 0, "errors": errs, "kinds": kinds, "err_span": span, "p50": float("nan"),
                "p99": float("nan"), "p999": float("nan"), "max": float("nan"), "secs": t1 - t0}

    def pct(p):
        return lat[max(0, math.ceil(p * len(lat)) - 1)]

    return {"n": len(lat), "errors": errs, "kinds": kinds, "err_span": span, "p50": pct(0.50), "p99": pct(0.99), "p999": pct(0.999),
            "max": lat[-1], "secs": t1 - t0}


def p99_series(samples: list, t0: float, t1: float, width: float) -> list:
    """p99 (ms) of each `width`-second slice of [t0, t1)."""
    out = []
    t = t0
    while t < t1 - width / 4:
        w = window_stats(samples, t, min(t + width, t1))
        out.append(w["p99"])
        t += width
    return out


def fmt_series(series: list) -> str:
    return " ".join("-" if x != x else f"{x:.1f}" for x in series)


def fmt_win(w: dict) -> str:
    kinds = "; ".join(f"{n}x {k}" for k, n in sorted(w["kinds"].items(), key=lambda kv: -kv[1])[:3])
    return (f"n={w['n']} p50={w['p50']:.2f} p99={w['p99']:.2f} p99.9={w['p999']:.2f} "
            f"max={w['max']:.1f} ms errors={w['errors']}"
            + (f" from {w['err_span'][0]:.2f} s to {w['err_span'][1]:.2f} s into the window ({kinds})" if kinds else ""))


# --------------------------------------------------------------------------- log scan


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def scan_logs(work: str, names: list) -> dict:
    """WARN/ERROR lines per node log, with the distinct messages (fields stripped)."""
    found = {}
    for name in names:
        path = os.path.join(work, f"{name}.log")
        if not os.path.exists(path):
            continue
        counts = {}
        with open(path, errors="replace") as f:
            for line in f:
                line = ANSI.sub("", line)
                m = re.search(r"\s(WARN|ERROR)\s+(\S+?):\s(.*)", line)
                if not m:
                    continue
                msg = re.sub(r"\s\w+=\S+", "", m.group(3)).strip()[:120]
                key = f"{m.group(1)} {m.group(2)}: {msg}"
                counts[key] = counts.get(key, 0) + 1
        if counts:
            found[name] = counts
    return found


def summarize_logs(found: dict) -> list:
    lines = []
    for name, counts in found.items():
        for msg, n in sorted(counts.items(), key=lambda kv: -kv[1])[:8]:
            lines.append(f"{name}: {n}x {msg}")
    return lines


# --------------------------------------------------------------------------- phase 1: handoff


def run_handoff(opts, binary: str, rate: int) -> dict:
    res = {"rate": rate, "coord": wait_cpu_free(f"handoff at {rate}")}
    watch = BusyWatch()
    work = tempfile.mkdtemp(prefix="ringkv-failbench-handoff-")
    extra = ["--fsync", "everysec", "--replicas", "3", "--read-quorum", "2", "--write-quorum", "2",
             "--handoff-bytes-per-sec", str(rate), "--anti-entropy-interval-ms", str(opts.anti_entropy_ms)
             ] + HANDOFF_GOSSIP + opts.ringkv_args.split()
    res["flags"] = " ".join(extra)
    nodes = []
    load = None
    try:
        log(f"handoff (rate {rate}): starting 4 nodes in {work}")
        nodes = start_cluster(binary, work, 4, extra)
        n1, dead = nodes[0], nodes[3]
        survivors = nodes[:3]
        q = int(parse_info(n1.call("CLUSTER", "INFO")).get("cluster_partitions", 256))
        owners = ring_owners(n1, q)
        dead_short = dead.id[:8]
        dead_parts = {p for p, ids in owners.items() if dead_short in ids}
        res["dead_partitions"] = len(dead_parts)

        lat = [key_of("lat:", i) for i in range(opts.lat_keys)]
        load_keys([nd.port for nd in nodes], lat, LAT_VALUE_BYTES)
        wait_idle(nodes)

        # Quiet window, healthy cluster.
        load = Load(n1.port, opts)
        time.sleep(2)
        q1 = (time.time(), time.time() + opts.quiet_secs)
        time.sleep(opts.quiet_secs)
        samples = load.stop()
        load = None
        res["quiet_before"] = window_stats(samples, *q1)
        log(f"quiet before: {fmt_win(res['quiet_before'])}")

        # Kill node 4, wait until every survivor sees it down.
        dead.kill()
        t_kill = time.time()
        while True:
            if all(nd.cluster_nodes().get(dead.id, {}).get("status") == "down" for nd in survivors):
                break
            if time.time() - t_kill > 60:
                raise RuntimeError("survivors did not mark the killed node down within 60 s")
            time.sleep(0.1)
        res["down_after"] = time.time() - t_kill
        log(f"node4 killed; all survivors see it down after {res['down_after']:.1f} s")

        # Write distinct keys until `hints` of them belong to node 4.
        keys, mine = [], 0
        i = 0
        while mine < opts.hints:
            k = key_of("h:", i)
            keys.append(k)
            if partition_of(k, q) in dead_parts:
                mine += 1
            i += 1
        hint_keys = keys
        res["keys_written"] = len(keys)
        res["expected_hints"] = mine
        lr = load_keys([nd.port for nd in survivors], keys, opts.hint_value_bytes, conns=opts.loader_conns)
        res["write"] = lr
        log(f"wrote {lr['keys']} keys of {opts.hint_value_bytes} B through the survivors in {lr['secs']:.1f} s "
            f"({lr['keys'] / lr['secs']:.0f}/s), {lr['errors']} errors {lr['error_sample'] or ''}")
        # Hints are fsynced before they count toward W, but a write acked by two
        # live owners may leave its hint a moment later: wait for the count.
        deadline = time.time() + 30
        while True:
            infos = [nd.info("cluster") for nd in survivors]
            pending = sum(int(f["hints_pending"]) for f in infos)
            if pending >= mine or time.time() > deadline:
                break
            time.sleep(0.5)
        res["hints_pending"] = pending
        res["hint_bytes"] = sum(int(f["hints_pending_bytes"]) for f in infos)
        res["hints_per_node"] = [int(f["hints_pending"]) for f in infos]
        res["hints_rows"] = []
        for nd in survivors:
            for row in nd.call("CLUSTER", "HINTS"):
                res["hints_rows"].append(f"{nd.name}: target {row[0].decode()[:8]} hints {row[1]} "
                                         f"bytes {row[2]} status {row[3]}")
        log(f"hints pending: {pending} (expected {mine}), {res['hint_bytes'] / MIB:.1f} MiB, per survivor "
            f"{res['hints_per_node']}")
        res["idle_wait"] = wait_idle(survivors)

        # Restart node 4 with the load running; time the replay.
        load = Load(n1.port, opts)
        time.sleep(2)
        t_restart = time.time()
        cpu0 = [nd.cpu() for nd in survivors]
        dead.start(wait=False)
        t_up = t_ready = None
        timeline = []
        limit = 120 + 5 * res["hint_bytes"] / max(rate or (64 * MIB), 1)
        last_print = 0.0
        peak_suspect = 0
        while True:
            now = time.time()
            if t_ready is None:
                try:
                    if dead.call("PING") == "PONG":
                        t_ready = now
                except (OSError, ConnectionError, RespError):
                    pass
            if not dead.alive():
                raise RuntimeError(f"restarted node exited with {dead.proc.returncode}")
            infos = [nd.info("cluster") for nd in survivors]
            pend = sum(int(f["hints_pending"]) for f in infos)
            pend_b = sum(int(f["hints_pending_bytes"]) for f in infos)
            peak_suspect = max([peak_suspect] + [int(f["cluster_members_suspect"]) + int(f["cluster_members_down"])
                                                 for f in infos if t_up])
            if t_up is None and all(nd.cluster_nodes().get(dead.id, {}).get("status") == "up" for nd in survivors):
                t_up = now
                log(f"node4 seen up by every survivor {t_up - t_restart:.2f} s after restart")
            timeline.append((now - t_restart, pend, pend_b))
            if now - last_print >= 2:
                log(f"  replay t={now - t_restart:5.1f}s pending {pend} hints, {pend_b / MIB:.1f} MiB")
                last_print = now
            if t_up is not None and pend == 0:
                t_done = now
                cpu1 = [nd.cpu() for nd in nodes]
                break
            if now - t_restart > limit:
                raise RuntimeError(f"hints not drained after {limit:.0f} s: {pend} pending")
            time.sleep(0.2)
        # Cores used per node from the restart to drained (node 4: since its start).
        res["cpu"] = [(b - a) / (t_done - t_restart) for a, b in zip(cpu0 + [0.0], cpu1)]
        res["peak_suspect_or_down_after_up"] = peak_suspect
        res["t_ready"] = (t_ready or t_done) - t_restart
        res["t_up"] = t_up - t_restart
        res["t_done"] = t_done - t_restart
        res["replay_secs"] = t_done - t_up
        res["timeline"] = timeline
        # What the replay carried: the most pending between the restart and
        # node 4 being seen up (the load's writes while it was still down add
        # a few hints to the ones written on purpose).
        upto = [row for row in timeline if row[0] <= res["t_up"]] or timeline[:1]
        res["replayed_hints"] = max(row[1] for row in upto)
        res["replayed_bytes"] = max(row[2] for row in upto)
        log(f"hints drained {res['t_done']:.1f} s after restart ({res['replay_secs']:.1f} s after node4 was seen up)")
        time.sleep(2)
        q2 = (time.time(), time.time() + opts.quiet_secs)
        time.sleep(opts.quiet_secs)
        samples = load.stop()
        load = None
        res["during"] = window_stats(samples, t_up, t_done)
        res["during_from_restart"] = window_stats(samples, t_restart, t_done)
        res["quiet_after"] = window_stats(samples, *q2)
        res["series"] = p99_series(samples, t_restart, t_done, opts.series_secs)
        log(f"during replay: {fmt_win(res['during'])}")
        log(f"p99 per {opts.series_secs:g} s from the restart: {fmt_series(res['series'])}")
        log(f"quiet after:   {fmt_win(res['quiet_after'])}")

        # Verify: node 4 holds every key it owns, and serves a sample.
        dead.learn_id()
        owners = ring_owners(n1, q)
        dead_parts = {p for p, ids in owners.items() if dead_short in ids}
        want_h = {k for k in hint_keys if partition_of(k, q) in dead_parts}
        want_lat = {k for k in lat if partition_of(k, q) in dead_parts}
        held_h = local_keys(dead, "h:")
        res["verify_local"] = {"expected": len(want_h), "held": len(held_h & want_h),
                               "missing": len(want_h - held_h), "extra": len(held_h - want_h)}
        res["dbsize"] = {"expected": len(want_h) + len(want_lat), "got": int(dead.call("DBSIZE"))}
        res["verify_get"] = verify_sample(dead, hint_keys, opts.hint_value_bytes, opts.verify_sample)
        f4 = dead.info("cluster")
        res["node4_puts_served"] = int(f4.get("replica_puts_served", 0))
        log(f"verify: node-local {res['verify_local']}, DBSIZE {res['dbsize']}, GET via node4 {res['verify_get']}")
    finally:
        if load:
            load.stop()
        for nd in nodes:
            nd.stop()
        res["logs"] = scan_logs(work, [nd.name for nd in nodes])
        res["coord"] += "; " + watch.stop()
        shutil.rmtree(work, ignore_errors=True)
    return res


# --------------------------------------------------------------------------- phase 2: join


def run_join(opts, binary: str) -> dict:
    res = {"coord": wait_cpu_free("join")}
    watch = BusyWatch()
    work = tempfile.mkdtemp(prefix="ringkv-failbench-join-")
    n_rep = opts.join_replicas
    extra = ["--fsync", "everysec", "--replicas", str(n_rep), "--read-quorum", str(min(2, n_rep)),
             "--write-quorum", str(min(2, n_rep)), "--stream-bytes-per-sec", str(opts.stream_rate),
             "--anti-entropy-interval-ms", str(opts.anti_entropy_ms)] + opts.ringkv_args.split()
    res["flags"] = " ".join(extra)
    nodes = []
    load = None
    try:
        log(f"join: starting 3 nodes in {work}")
        nodes = start_cluster(binary, work, 3, extra)
        n1 = nodes[0]
        q = int(parse_info(n1.call("CLUSTER", "INFO")).get("cluster_partitions", 256))
        # The joiner's share with bounded loads: N/4 of the partitions.
        share = min(n_rep, 4) / 4
        per_key = opts.join_value_bytes + 12
        nkeys = max(1000, int(opts.join_bytes / share / per_key))
        res["keys"] = nkeys
        res["unique_bytes"] = nkeys * opts.join_value_bytes
        lat = [key_of("lat:", i) for i in range(opts.lat_keys)]
        load_keys([nd.port for nd in nodes], lat, LAT_VALUE_BYTES)
        keys = [key_of("j:", i) for i in range(nkeys)]
        log(f"join: loading {nkeys} keys of {opts.join_value_bytes} B "
            f"({res['unique_bytes'] / MIB:.0f} MiB unique, x{n_rep} replicas)")
        lr = load_keys([nd.port for nd in nodes], keys, opts.join_value_bytes, conns=opts.loader_conns)
        res["write"] = lr
        log(f"loaded in {lr['secs']:.1f} s ({lr['bytes'] / MIB / lr['secs']:.1f} MiB/s client data), "
            f"{lr['errors']} errors {lr['error_sample'] or ''}")
        res["idle_wait"] = wait_idle(nodes, limit=300)
        res["data_before"] = [data_bytes(nd) for nd in nodes]
        res["du_before"] = [du(nd.dir) for nd in nodes]
        log(f"stored per node (sstables+memtable): {[f'{b / MIB:.0f} MiB' for b in res['data_before']]}, "
            f"after {res['idle_wait']:.0f} s of compaction wait")

        load = Load(n1.port, opts)
        time.sleep(2)
        q1 = (time.time(), time.time() + opts.quiet_secs)
        time.sleep(opts.quiet_secs)

        joiner = Node("node4", binary, free_port(), work, extra + ["--join", f"127.0.0.1:{n1.port}"])
        while joiner.port in [nd.port for nd in nodes]:
            joiner = Node("node4", binary, free_port(), work, extra + ["--join", f"127.0.0.1:{n1.port}"])
        cpu0 = [nd.cpu() for nd in nodes] + [0.0]
        t_start = time.time()
        joiner.start()
        nodes.append(joiner)
        t_members = None
        last_print = 0.0
        peak_suspect = 0
        status = {}
        while True:
            now = time.time()
            if not all(nd.alive() for nd in nodes):
                raise RuntimeError("a node exited during the join")
            infos = [nd.info("cluster") for nd in nodes]
            peak_suspect = max([peak_suspect] + [int(f["cluster_members_suspect"]) + int(f["cluster_members_down"])
                                                 for f in infos])
            if t_members is None and all(f["cluster_members_up"] == "4" for f in infos):
                t_members = now
                log(f"all nodes see 4 members {t_members - t_start:.2f} s after the joiner started")
            owned = []
            for nd in nodes:
                me = [r for r in nd.cluster_nodes().values() if r["myself"]]
                owned.append(me[0]["partitions"] if me else -1)
            status = {
                "settled": [int(f["rebalance_settled"]) for f in infos],
                "pending": [int(f["rebalance_partitions_pending"]) for f in infos],
                "pushes": [int(f["rebalance_pushes_owed"]) for f in infos],
                "held": [int(f["rebalance_partitions_held"]) for f in infos],
                "owned": owned,
                "bytes_sent": [int(f["rebalance_bytes_sent"]) for f in infos],
                "keys_sent": [int(f["rebalance_keys_sent"]) for f in infos],
                "keys_received": [int(f["rebalance_keys_received"]) for f in infos],
                "chunks_received": [int(f["rebalance_chunks_received"]) for f in infos],
                "partitions_sent": [int(f["rebalance_partitions_sent"]) for f in infos],
                "partitions_dropped": [int(f["rebalance_partitions_dropped"]) for f in infos],
                "keys_dropped": [int(f["rebalance_keys_dropped"]) for f in infos],
                "failures": [int(f["rebalance_transfer_failures"]) for f in infos],
                "refused": [int(f["rebalance_chunks_refused"]) for f in infos],
                "last_error": [f["rebalance_last_error"] for f in infos],
            }
            done = (t_members is not None and all(status["settled"]) and not any(status["pending"])
                    and not any(status["pushes"])
                    and all(h == o for h, o in zip(status["held"], status["owned"])))
            if now - last_print >= 5 or done:
                log(f"  join t={now - t_start:5.1f}s sent {sum(status['bytes_sent']) / MIB:7.1f} MiB "
                    f"held {status['held']} owned {owned} pending {status['pending']} "
                    f"settled {status['settled']} failures {status['failures']}")
                last_print = now
            if done:
                t_done = now
                res["cpu"] = [(nd.cpu() - c0) / (t_done - t_start) for nd, c0 in zip(nodes, cpu0)]
                break
            if now - t_start > opts.join_timeout:
                raise RuntimeError(f"rebalance did not settle within {opts.join_timeout} s: {status}")
            time.sleep(0.5)
        res["status"] = status
        res["peak_suspect_or_down"] = peak_suspect
        res["t_members"] = (t_members or t_done) - t_start
        res["t_done"] = t_done - t_start
        log(f"rebalance settled {res['t_done']:.1f} s after the joiner started")
        time.sleep(2)
        q2 = (time.time(), time.time() + opts.quiet_secs)
        time.sleep(opts.quiet_secs)
        samples = load.stop()
        load = None
        res["quiet_before"] = window_stats(samples, *q1)
        res["during"] = window_stats(samples, t_start, t_done)
        res["quiet_after"] = window_stats(samples, *q2)
        res["series"] = p99_series(samples, t_start, t_done, opts.series_secs)
        log(f"quiet before: {fmt_win(res['quiet_before'])}")
        log(f"during move:  {fmt_win(res['during'])}")
        log(f"p99 per {opts.series_secs:g} s from the joiner's start: {fmt_series(res['series'])}")
        log(f"quiet after:  {fmt_win(res['quiet_after'])}")

        # Verify: every node holds exactly the keys it owns; values via the joiner.
        for nd in nodes:
            nd.learn_id()
        owners = ring_owners(n1, q)
        by_part = {}
        for k in keys + lat:
            p = partition_of(k, q)
            by_part[p] = by_part.get(p, 0) + 1
        res["dbsize"] = []
        for nd in nodes:
            want = sum(n for p, n in by_part.items() if nd.id[:8] in owners[p])
            res["dbsize"].append({"node": nd.name, "expected": want, "got": int(nd.call("DBSIZE"))})
        res["joiner_share_bytes"] = sum(
            1 for k in keys if joiner.id[:8] in owners[partition_of(k, q)]) * opts.join_value_bytes
        res["data_after"] = [data_bytes(nd) for nd in nodes]
        res["du_after"] = [du(nd.dir) for nd in nodes]
        res["verify_get"] = verify_sample(joiner, keys, opts.join_value_bytes, opts.verify_sample)
        log(f"verify: DBSIZE {res['dbsize']}, GET via node4 {res['verify_get']}")
    finally:
        if load:
            load.stop()
        for nd in nodes:
            nd.stop()
        res["logs"] = scan_logs(work, [nd.name for nd in nodes])
        res["coord"] += "; " + watch.stop()
        shutil.rmtree(work, ignore_errors=True)
    return res


# --------------------------------------------------------------------------- report


def rate_label(rate: int) -> str:
    return "unlimited (0)" if rate == 0 else f"{rate / MIB:g} MiB/s"


def ms(x: float) -> str:
    return "n/a" if x != x else f"{x:.2f}"


def report(opts, cmdline: str, handoffs: list, join: dict, started: float) -> list:
    md = ["# Failure benchmarks: hinted handoff replay and a node join", "",
          f"Run: `{cmdline}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, "
          f"{os.cpu_count()} cores, total {(time.time() - started) / 60:.1f} min. "
          "All processes on this one machine (4 ringkv servers, the loader and the latency client share "
          "the cores); `--fsync everysec`; anti-entropy "
          + ("off" if opts.anti_entropy_ms == 0 else f"every {opts.anti_entropy_ms} ms") + ".", "",
          f"Client load during every window: {opts.load_conns} connections to node 1, paced at "
          f"{opts.load_rate:g} requests/s in total, 50% GET / 50% SET of {LAT_VALUE_BYTES}-byte values over "
          f"{opts.lat_keys} keys; latency is send-to-reply per request; p99 over the samples of the window.", ""]
    if handoffs:
        md += ["## Hinted handoff replay", "",
               f"4 nodes, N=3 R=2 W=2, gossip `{' '.join(HANDOFF_GOSSIP)}`. Node 4 SIGKILLed; distinct keys "
               f"with {opts.hint_value_bytes}-byte values written through the survivors until {opts.hints} of them "
               "fell in node 4's partitions (one hint each, held by the fallback); node 4 restarted on the same "
               "ports and directory with the load running. Replay time: from every survivor seeing node 4 `up` "
               "to `hints_pending` 0 on every node. `--handoff-bytes-per-sec` is per hint holder (3 here).", "",
               "| handoff rate | hints written | keys written | write errors | hints replayed | MiB replayed | "
               "up after restart s | replay s | hints/s | MiB/s | MiB/s per holder vs limit |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in handoffs:
            secs = max(r["replay_secs"], 1e-9)
            mibs = r["replayed_bytes"] / MIB / secs
            vs = "n/a" if r["rate"] == 0 else f"{mibs / 3:.2f} / {r['rate'] / MIB:g} ({mibs / 3 / (r['rate'] / MIB) * 100:.0f}%)"
            md.append(f"| {r['label']} | {r['hints_pending']} | {r['keys_written']} | "
                      f"{r['write']['errors']} | {r['replayed_hints']} | {r['replayed_bytes'] / MIB:.1f} | "
                      f"{r['t_up']:.2f} | {r['replay_secs']:.1f} | "
                      f"{r['replayed_hints'] / secs:.0f} | {mibs:.2f} | {vs} |")
        by_rate = {}
        for r in handoffs:
            by_rate.setdefault(r["rate"], []).append(r["replayed_bytes"] / MIB / max(r["replay_secs"], 1e-9))
        if 0 in by_rate and len(by_rate) > 1:
            unl = sum(by_rate[0]) / len(by_rate[0])
            lim = max((sum(v) / len(v), k) for k, v in by_rate.items() if k)
            md += ["", f"Mean replay rate: unlimited {unl:.2f} MiB/s, {rate_label(lim[1])} {lim[0]:.2f} MiB/s "
                   f"(3 holders). " + ("Unlimited is not faster: the replay is bound by something other than the "
                                       "throttle. `server/handoff.rs` plans one batch (at most 256 KiB, "
                                       "`HandoffConfig::max_batch_bytes`) per target per 100 ms tick, and only "
                                       "when the previous batch is acknowledged, so a holder sends at most "
                                       "2.5 MiB/s to one target whatever `--handoff-bytes-per-sec` says."
                                       if unl <= lim[0] * 1.2 else "")]
        md += ["", "Client latency (ms) on survivor node 1 (successful requests; failures are counted):", "",
               "| handoff rate | window | s | requests | errors | p50 | p99 | p99.9 | max |",
               "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in handoffs:
            for name, key in (("quiet, before the kill", "quiet_before"), ("during the replay", "during"),
                              ("restart to drained", "during_from_restart"), ("quiet, after the replay", "quiet_after")):
                w = r[key]
                md.append(f"| {r['label']} | {name} | {w['secs']:.1f} | {w['n']} | {w['errors']} | "
                          f"{ms(w['p50'])} | {ms(w['p99'])} | {ms(w['p999'])} | {ms(w['max'])} |")
        errs = [f"- {r['label']}, {name}: {r[key]['errors']} errors from {r[key]['err_span'][0]:.2f} s "
                f"to {r[key]['err_span'][1]:.2f} s into the window: "
                + "; ".join(f"{n}x `{k}`" for k, n in r[key]['kinds'].items())
                for r in handoffs for name, key in (("quiet before", "quiet_before"), ("during", "during"),
                                                     ("restart to drained", "during_from_restart"),
                                                     ("quiet after", "quiet_after")) if r[key]["kinds"]]
        if errs:
            md += ["", "Client errors by window:", ""] + errs
        md += ["", "Target: p99 during the replay at most 2x the quiet p99, judged against the mean of the quiet p99 before the kill "
               "and after the replay (the two quiet windows alone differ by the factor in the noise column).", "",
               "| handoff rate | quiet p99 before | p99 during | quiet p99 after | during / before | during / after | "
               "quiet after / before (noise) | target met (during / mean quiet) | "
               "node 4 holds its keys | DBSIZE node 4 | GET sample via node 4 |",
               "|---|---:|---:|---:|---:|---:|---:|---|---|---|---|"]
        for r in handoffs:
            qb, qa, dur = r["quiet_before"]["p99"], r["quiet_after"]["p99"], r["during"]["p99"]
            r["ratio"] = dur / ((qb + qa) / 2)
            v, d, g = r["verify_local"], r["dbsize"], r["verify_get"]
            md.append(f"| {r['label']} | {ms(qb)} | {ms(dur)} | {ms(qa)} | {dur / qb:.2f} | {dur / qa:.2f} | "
                      f"{qa / qb:.2f} | {'**yes**' if r['ratio'] <= 2 else '**no**'} ({r['ratio']:.2f}) | "
                      f"{v['held']}/{v['expected']} (missing {v['missing']}) | {d['got']}/{d['expected']} | "
                      f"{g['right']}/{g['sampled']} right, {g['missing']} missing, {g['wrong']} wrong |")
        md.append("")
        for r in handoffs:
            md.append(f"- {r['label']}: p99 (ms) per {opts.series_secs:g} s from the restart to drained: "
                      f"{fmt_series(r['series'])}.")
        for r in handoffs:
            md.append(f"- {r['label']}: cores used from the restart to drained, nodes 1-4: "
                      + ", ".join(f"{c:.2f}" for c in r["cpu"]) + f" (sum {sum(r['cpu']):.2f} of {os.cpu_count()}).")
        for r in handoffs:
            md.append(f"- {r['label']}: hints per survivor {r['hints_per_node']} (expected "
                      f"{r['expected_hints']} in total); node 4 answered PING {r['t_ready']:.2f} s after its "
                      f"restart; survivors saw it down {r['down_after']:.1f} s after the kill; members suspect or "
                      f"down seen during the replay: {r['peak_suspect_or_down_after_up']}; {r['coord']}.")
        md.append("")
    if join:
        st = join["status"]
        sent = sum(st["bytes_sent"])
        secs = join["t_done"]
        md += ["## Node join", "",
               f"3 nodes, N={opts.join_replicas} R={min(2, opts.join_replicas)} W={min(2, opts.join_replicas)}, "
               f"{join['keys']} keys of {opts.join_value_bytes} bytes ({join['unique_bytes'] / MIB:.0f} MiB unique), "
               f"then a 4th node started with `--join` while the load ran. Settled: every node "
               "`rebalance_settled:1`, no partition pending, no push owed, partitions held = partitions owned. "
               f"`--stream-bytes-per-sec` {rate_label(opts.stream_rate)}, per sending node, counted once per target.",
               "",
               "| joiner's share MiB | streamed MiB (all targets) | stream time s | MiB/s streamed | "
               "all see 4 members s | keys received by joiner | keys received by old nodes | transfer failures | load MiB/s |",
               "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
               f"| {join['joiner_share_bytes'] / MIB:.0f} | {sent / MIB:.0f} | {secs:.1f} | {sent / MIB / secs:.1f} | "
               f"{join['t_members']:.2f} | {st['keys_received'][3]} | {sum(st['keys_received'][:3])} | "
               f"{sum(st['failures'])} | {join['write']['bytes'] / MIB / join['write']['secs']:.1f} |", "",
               "Per node after the move:", "",
               "| node | stored MiB before | stored MiB after | dir MiB after | partitions owned | held | "
               "MiB sent | keys sent | keys received | partitions dropped | DBSIZE / expected |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for i, d in enumerate(join["dbsize"]):
            before = f"{join['data_before'][i] / MIB:.0f}" if i < 3 else "0"
            md.append(f"| {d['node']} | {before} | {join['data_after'][i] / MIB:.0f} | {join['du_after'][i] / MIB:.0f} | "
                      f"{st['owned'][i]} | {st['held'][i]} | {st['bytes_sent'][i] / MIB:.0f} | {st['keys_sent'][i]} | "
                      f"{st['keys_received'][i]} | {st['partitions_dropped'][i]} | {d['got']}/{d['expected']} |")
        recv_old, recv_new = sum(st["keys_received"][:3]), st["keys_received"][3]
        md += ["", f"The old nodes received {recv_old} keys ({recv_old / max(recv_new, 1):.2f}x what the joiner "
               "received): a node that loses a partition streams it to every current owner, the stayers that "
               "already hold it included (`cluster/rebalance.rs`, Handoff), so about N times the joiner's share "
               "crosses the wire. Stored bytes are the engine's SSTables plus memtable: the keys an old node "
               "dropped are engine deletes that free space only when compaction reaches them."]
        md += ["", "Client latency (ms) on node 1, an old node (successful requests; failures are counted):", "",
               "| window | s | requests | errors | p50 | p99 | p99.9 | max |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, key in (("quiet, 3 nodes", "quiet_before"), ("during the move", "during"),
                          ("quiet, 4 nodes after", "quiet_after")):
            w = join[key]
            md.append(f"| {name} | {w['secs']:.1f} | {w['n']} | {w['errors']} | {ms(w['p50'])} | {ms(w['p99'])} | "
                      f"{ms(w['p999'])} | {ms(w['max'])} |")
        errs = [f"- {name}: {join[key]['errors']} errors from {join[key]['err_span'][0]:.2f} s to "
                f"{join[key]['err_span'][1]:.2f} s into the window: "
                + "; ".join(f"{n}x `{k}`" for k, n in join[key]['kinds'].items())
                for name, key in (("quiet before", "quiet_before"), ("during", "during"),
                                  ("quiet after", "quiet_after")) if join[key]["kinds"]]
        if errs:
            md += ["", "Client errors by window:", ""] + errs
        ratio = join["during"]["p99"] / ((join["quiet_before"]["p99"] + join["quiet_after"]["p99"]) / 2)
        join["ratio"] = ratio
        g = join["verify_get"]
        md += ["", "Cores used from the joiner's start to settled, nodes 1-4: "
               + ", ".join(f"{c:.2f}" for c in join["cpu"]) + f" (sum {sum(join['cpu']):.2f} of {os.cpu_count()})."]
        md += ["", f"p99 (ms) per {opts.series_secs:g} s from the joiner's start to settled: "
               f"{fmt_series(join['series'])}.", "",
               f"p99 during the move / mean quiet p99: **{ratio:.2f}** (the issue sets no number for the join; "
               f"against the handoff's 2x it is {'met' if ratio <= 2 else 'not met'}). "
               f"GET sample through the joiner: {g['right']}/{g['sampled']} right, {g['missing']} missing, "
               f"{g['wrong']} wrong (siblings or other values), {g['errors']} errors. "
               f"Members suspect or down seen during the join: {join['peak_suspect_or_down']}. {join['coord']}.", ""]
    logs = []
    for label, r in [(f"handoff {h['label']}", h) for h in handoffs] + ([("join", join)] if join else []):
        for line in summarize_logs(r.get("logs", {})):
            logs.append(f"- {label}, {line}")
    md += ["## Server warnings and errors in the logs", ""] + (logs or ["None."]) + [""]
    return md


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ringkv", default=os.path.join(ROOT, "target", "release", "ringkv"))
    ap.add_argument("--quick", action="store_true", help="small sizes, short windows: a smoke run")
    ap.add_argument("--hints", type=int, help="hints to replay (default 100000; quick 10000)")
    ap.add_argument("--hint-value-bytes", type=int, default=1000)
    ap.add_argument("--handoff-rates", default="4194304,0",
                    help="comma-separated --handoff-bytes-per-sec values, one fresh cluster each")
    ap.add_argument("--rounds", type=int, help="handoff runs per rate (default 2; quick 1)")
    ap.add_argument("--join-bytes", type=float, help="MiB the joiner should receive (default 1024; quick 64)")
    ap.add_argument("--join-value-bytes", type=int, default=4000)
    ap.add_argument("--join-replicas", type=int, default=3, help="N for the join phase")
    ap.add_argument("--stream-rate", type=int, default=33554432, help="--stream-bytes-per-sec for the join")
    ap.add_argument("--join-timeout", type=float, default=1200)
    ap.add_argument("--anti-entropy-ms", type=int, default=0, help="--anti-entropy-interval-ms (0 = off)")
    ap.add_argument("--quiet-secs", type=float, help="length of each quiet window (default 20; quick 8)")
    ap.add_argument("--series-secs", type=float, default=5.0, help="slice width of the p99 time series")
    ap.add_argument("--load-rate", type=float, default=1000.0, help="latency load, requests/s in total")
    ap.add_argument("--load-conns", type=int, default=10)
    ap.add_argument("--lat-keys", type=int, default=10000)
    ap.add_argument("--loader-conns", type=int, default=6)
    ap.add_argument("--verify-sample", type=int, default=2000)
    ap.add_argument("--skip-handoff", action="store_true")
    ap.add_argument("--skip-join", action="store_true")
    ap.add_argument("--ringkv-args", default="", help="extra flags for every node")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench-failures-latest.md"))
    opts = ap.parse_args()
    if opts.hints is None:
        opts.hints = 10_000 if opts.quick else 100_000
    if opts.join_bytes is None:
        opts.join_bytes = 64 if opts.quick else 1024
    opts.join_bytes = int(opts.join_bytes * MIB)
    if opts.rounds is None:
        opts.rounds = 1 if opts.quick else 2
    if opts.quiet_secs is None:
        opts.quiet_secs = 8 if opts.quick else 20

    binary = os.path.abspath(opts.ringkv)
    if not os.path.exists(binary):
        print(f"{binary} not found: run `cargo build --release --bin ringkv` first", file=sys.stderr)
        return 2
    for tool in ("redis-cli", "pgrep"):
        if not shutil.which(tool):
            print(f"{tool} not found", file=sys.stderr)
            return 2

    cmdline = "python3 tools/bench_failures.py" + ("" if len(sys.argv) == 1 else " " + " ".join(sys.argv[1:]))
    started = time.time()
    handoffs, join = [], None
    if not opts.skip_handoff:
        rates = [int(x) for x in opts.handoff_rates.split(",") if x.strip()]
        for rnd in range(opts.rounds):
            # Alternate the order so neither setting always runs first.
            for rate in (rates if rnd % 2 == 0 else rates[::-1]):
                r = run_handoff(opts, binary, rate)
                r["label"] = rate_label(rate) + (f" #{rnd + 1}" if opts.rounds > 1 else "")
                handoffs.append(r)
    if not opts.skip_join:
        join = run_join(opts, binary)

    md = report(opts, cmdline, handoffs, join, started)
    text = "\n".join(md)
    print("\n" + text, flush=True)
    os.makedirs(os.path.dirname(opts.out), exist_ok=True)
    with open(opts.out, "w") as f:
        f.write(text)
    print(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
