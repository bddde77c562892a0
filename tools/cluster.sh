#!/usr/bin/env bash
# Starts a local 3-node ringkv cluster for trying it out:
#   client ports 7000, 7001, 7002; peer ports 17000-17002; data in ./data/700x.
# Nodes 7001 and 7002 join through 7000 (--join names a client address). Ctrl-C stops all three (SIGTERM, a
# clean shutdown); their logs go to ./data/700x.log.
#
#   tools/cluster.sh                 # debug build
#   RINGKV=target/release/ringkv tools/cluster.sh
#   tools/cluster.sh --gossip-interval-ms 200   # extra flags go to every node
#   BASE_PORT=7100 tools/cluster.sh             # ports 7100-7102 instead
#
# Then: redis-cli -p 7000 CLUSTER NODES, CLUSTER INFO, CLUSTER PREFLIST mykey.
# Any node serves any key: N=3 replicas, R=W=2 quorums by default.
set -euo pipefail

cd "$(dirname "$0")/.."
RINGKV=${RINGKV:-target/debug/ringkv}
if [[ ! -x $RINGKV ]]; then
    cargo build --bin ringkv
fi

BASE_PORT=${BASE_PORT:-7000}
pids=()
stop() {
    trap - INT TERM EXIT
    echo "stopping ${pids[*]}"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop INT TERM EXIT

for port in $BASE_PORT $((BASE_PORT + 1)) $((BASE_PORT + 2)); do
    dir=./data/$port
    mkdir -p "$dir"
    join=()
    if [[ $port != "$BASE_PORT" ]]; then join=(--join "127.0.0.1:$BASE_PORT"); fi
    "$RINGKV" --port "$port" --dir "$dir" "${join[@]}" "$@" 2>"$dir.log" &
    pids+=($!)
    echo "node $port: pid $!, data in $dir, log in $dir.log"
done

echo "cluster running; Ctrl-C stops it"
wait
