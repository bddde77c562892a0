#!/usr/bin/env python3
"""redis-py against a running ringkv: its default protocol (RESP3 from
redis-py 8 on), then RESP2 and RESP3 explicitly (redis-py before 8 defaults
to RESP2); pipelines, errors, client naming.

Usage: redis_py_smoke.py PORT
Exits non-zero with a message on the first mismatch.
"""
import sys

import redis


def check(what, got, want):
    if got != want:
        sys.exit(f"{what}: got {got!r}, want {want!r}")


def main(port):
    for proto in (None, 2, 3):
        kwargs = {} if proto is None else {"protocol": proto}
        r = redis.Redis(host="127.0.0.1", port=port, decode_responses=True,
                        client_name=f"smoke-{proto}", **kwargs)
        check("ping", r.ping(), True)
        check("set", r.set(f"py{proto}:k", "v"), True)
        check("get", r.get(f"py{proto}:k"), "v")
        check("get missing", r.get(f"py{proto}:missing"), None)
        check("incr", r.incr(f"py{proto}:n"), 1)
        check("incrby", r.incrby(f"py{proto}:n", 41), 42)
        check("expire", r.expire(f"py{proto}:k", 100), True)
        ttl = r.ttl(f"py{proto}:k")
        if not 0 < ttl <= 100:
            sys.exit(f"ttl: {ttl}")
        check("mset", r.mset({f"py{proto}:a": "1", f"py{proto}:b": "2"}), True)
        check("mget", r.mget([f"py{proto}:a", f"py{proto}:b", f"py{proto}:c"]), ["1", "2", None])
        check("client name", r.client_getname(), f"smoke-{proto}")
        pipe = r.pipeline(transaction=False)
        for i in range(1000):
            pipe.set(f"py{proto}:p{i}", i)
        for i in range(1000):
            pipe.get(f"py{proto}:p{i}")
        results = pipe.execute()
        check("pipeline", results[1000:], [str(i) for i in range(1000)])
        try:
            r.execute_command("NOSUCHCMD", "a")
            sys.exit("unknown command did not fail")
        except redis.ResponseError as e:
            check("unknown command", str(e).startswith("unknown command 'NOSUCHCMD'"), True)
        info = r.info("server")
        check("info", "redis_version" in info, True)
        check("delete", r.delete(f"py{proto}:a", f"py{proto}:b"), 2)
        check("config get", r.config_get("maxclients"), {"maxclients": "10000"})
    print("redis-py smoke test passed (redis-py", redis.__version__ + ")")


if __name__ == "__main__":
    main(int(sys.argv[1]))
