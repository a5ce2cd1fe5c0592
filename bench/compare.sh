#!/usr/bin/env bash
# tern beside its peers, one after another on this machine, and one table of ratios.
#
#   bench/compare.sh                 # tern, rqlite, etcd, PostgreSQL (about 10 minutes)
#   SECS=5 PEERS_LIST="rqlite" bench/compare.sh
#
# tern runs as 3 `tern server` processes on loopback (semi-sync, row log), driven by the
# same load generator as rqlite (the peers' rqlite_load.rs: INSERT OR REPLACE into a
# 100,000-row table at random keys, reads by key, one keep-alive connection per client).
# The peers run through their own scripts in $PEERS_DIR (default ../shared/bench/peers),
# which wait for a quiet machine before each point. Every line each run prints is kept
# in $OUT (default /tmp/tern-compare.txt); the table at the end is built from it.
# The "HTTP floor" rows run the same reads against bench/http_floor.rs, a server that only
# answers: no server, tern included, can beat that ratio on this machine.
#
# Env: SECS (per point, default 10), PEERS_LIST (default "rqlite etcd pg"), TERN (the
# binary; default target/release/tern, built if missing), PEERS_DIR, OUT.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS_DIR=${PEERS_DIR:-$ROOT/../shared/bench/peers}
SECS=${SECS:-10}
PEERS_LIST=${PEERS_LIST:-"rqlite etcd pg"}
OUT=${OUT:-/tmp/tern-compare.txt}
TERN=${TERN:-$ROOT/target/release/tern}
WORK=$(mktemp -d /tmp/tern-compare.XXXXXX)
[[ -d $PEERS_DIR ]] || { echo "no peer scripts at $PEERS_DIR (set PEERS_DIR)" >&2; exit 1; }
[[ -x $TERN ]] || (cd "$ROOT" && cargo build --release)
LOAD=$WORK/rqlite_load
rustc -O --edition 2021 -o "$LOAD" "$PEERS_DIR/rqlite_load.rs"
: >"$OUT"
echo "# $(date -u +%FT%TZ) $(uname -r) cpus=$(nproc) SECS=$SECS tern=$("$TERN" --version 2>/dev/null || echo ?)" | tee -a "$OUT"

# ---- tern -------------------------------------------------------------------------
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -a HTTP PEER
for i in 1 2 3; do HTTP[$i]=127.0.0.1:$(free_port); PEER[$i]=127.0.0.1:$(free_port); done
CLUSTER="n1=${PEER[1]},n2=${PEER[2]},n3=${PEER[3]}"
for i in 1 2 3; do
  "$TERN" server --id "n$i" --http "${HTTP[$i]}" --peer "${PEER[$i]}" --cluster "$CLUSTER" --data "$WORK/n$i" >"$WORK/n$i.log" 2>&1 &
  PIDS+=($!)
done
for _ in $(seq 300); do
  ok=1; for i in 1 2 3; do curl -sf "http://${HTTP[$i]}/readyz" >/dev/null || ok=0; done
    ((ok)) && break; sleep 0.1
done
((ok)) || { echo "tern did not become ready; its logs:" >&2; tail -5 "$WORK"/n*.log >&2; exit 1; }
# Retried while the cluster settles its first leader (503 until then).
post() {
  for _ in $(seq 50); do
    curl -sS --fail-with-body -m 60 -XPOST "http://$1$2" -H 'Content-Type: application/json' -d "$3" 2>/dev/null && return 0
    sleep 0.2
  done
  curl -sS --fail-with-body -m 60 -XPOST "http://$1$2" -H 'Content-Type: application/json' -d "$3"
}
# Both idempotent, as a retried request may have been applied.
post "${HTTP[1]}" /db/execute '["CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v TEXT)"]' >/dev/null
post "${HTTP[1]}" '/db/execute?w=all' '["WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<100000) INSERT OR REPLACE INTO kv SELECT x, substr(hex(zeroblob(128)),1,256) FROM c"]' >/dev/null
# The write and strong-read points go to the leader and the follower points to another
# node: found after the prefill, as an election may have moved leadership meanwhile
# (writes sent to a follower would be measured forwarded).
LEAD=1
for i in 1 2 3; do
  if curl -sf "http://${HTTP[$i]}/status" | python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)["node"]["role"] != "leader")'; then LEAD=$i; fi
done
FOLLOW=$(( LEAD % 3 + 1 ))
echo "# leader n$LEAD, follower points on n$FOLLOW" | tee -a "$OUT"
tern_load() { "$LOAD" --secs "$SECS" --value-size 256 "$@" | tee -a "$OUT"; }
# The load generator's clients write the same keys with the same value in every run. A
# write that changes nothing makes no log entry in tern (it waits only for the copies of
# the state it saw), so each write point starts from rows that hold another value: every
# write of the run then changes its row, as the first run's do.
reset_values() {
  post "${HTTP[$LEAD]}" '/db/execute?w=all' '["UPDATE kv SET v = substr(hex(zeroblob(128)),1,256) WHERE v <> substr(hex(zeroblob(128)),1,256)"]' >/dev/null
}
for c in 1 32; do reset_values; tern_load --op put --addr "${HTTP[$LEAD]}" --clients "$c" --path /db/execute --label "tern put->leader"; done
for c in 1 32; do tern_load --op get --addr "${HTTP[$FOLLOW]}" --clients "$c" --path '/db/query?level=none' --label "tern get level=none->follower"; done
for c in 1 32; do tern_load --op get --addr "${HTTP[$LEAD]}" --clients "$c" --path '/db/query?level=strong' --label "tern get level=strong->leader"; done
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
wait 2>/dev/null || true
PIDS=()

# ---- the floor: an HTTP server that only answers (bench/http_floor.rs) ---------------
rustc -O --edition 2021 -o "$WORK/http_floor" "$ROOT/bench/http_floor.rs"
FLOOR=127.0.0.1:$(free_port)
"$WORK/http_floor" "$FLOOR" &
PIDS+=($!)
sleep 0.3
for c in 1 32; do tern_load --op get --addr "$FLOOR" --clients "$c" --path '/db/query?level=none' --label "floor get"; done
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
wait 2>/dev/null || true
PIDS=()

# ---- peers --------------------------------------------------------------------------
for peer in $PEERS_LIST; do
  case $peer in
    rqlite) SECS=$SECS CLIENTS_LIST="1 32" QUEUE_CLIENTS=" " READ_LEVELS="none strong" FAILOVERS=0 timeout 1200 "$PEERS_DIR/rqlite_3node.sh" ;;
    etcd) SECS=$SECS CLIENTS_LIST="1 32" CONTROL=0 CHECK_PERF=0 timeout 1200 "$PEERS_DIR/etcd_3node.sh" ;;
    pg) SECS=$SECS MODES="sync-any1-on" CLIENTS_LIST="1 16" timeout 1200 "$PEERS_DIR/pg_3node.sh" ;;
    *) echo "# unknown peer $peer" ;;
    esac 2>&1 | { grep -v '^#' || true; } | tee -a "$OUT" || echo "# $peer failed" | tee -a "$OUT"
done

# ---- one table ------------------------------------------------------------------------
python3 - "$OUT" <<'EOF'
import re, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r'^postgres (\S+) pgbench UPDATE: clients=(\d+) writes/s=(\d+) txns=\d+ p50=([\d.]+)ms', line)
    if m:
        rows[(f"postgres {m.group(1)}", int(m.group(2)))] = (int(m.group(3)), m.group(4))
        continue
    m = re.match(r'^(.*?): (?:op=\S+ )?clients=(\d+) .*?(?:writes|reads)/s=(\d+)(?: .*?p50=([\d.]+)ms)?', line)
    if m:
        rows[(m.group(1).strip(), int(m.group(2)))] = (int(m.group(3)), m.group(4))
def get(name, clients):
    return rows.get((name, clients))
comparisons = [
    ("writes (semi-sync), 1 client", ("tern put->leader", 1), [("rqlite put->leader", 1), ("etcd put->leader", 1), ("postgres sync-any1-on", 1)]),
    ("writes (semi-sync), 32 clients", ("tern put->leader", 32), [("rqlite put->leader", 32), ("etcd put->leader", 32), ("postgres sync-any1-on", 16)]),
    ("level=none reads on a follower, 1 client", ("tern get level=none->follower", 1), [("rqlite get level=none->follower", 1)]),
    ("level=none reads on a follower, 32 clients", ("tern get level=none->follower", 32), [("rqlite get level=none->follower", 32)]),
    ("the HTTP floor (bench/http_floor.rs), 1 client", ("floor get", 1), [("rqlite get level=none->follower", 1)]),
    ("the HTTP floor (bench/http_floor.rs), 32 clients", ("floor get", 32), [("rqlite get level=none->follower", 32)]),
    ("level=strong reads, 1 client", ("tern get level=strong->leader", 1), [("rqlite get level=strong->leader", 1)]),
    ("level=strong reads, 32 clients", ("tern get level=strong->leader", 32), [("rqlite get level=strong->leader", 32)]),
]
print("\n| point | tern ops/s (p50 ms) | peer | peer ops/s (p50 ms) | tern/peer |")
print("|---|---|---|---|---|")
for title, ours, peers in comparisons:
    mine = get(*ours)
    if not mine:
        continue
    for peer in peers:
        theirs = get(*peer)
        if not theirs:
            continue
        label = peer[0].split(" ")[0] + (f" ({peer[1]} clients)" if peer[1] != ours[1] else "")
        print(f"| {title} | {mine[0]:,} ({mine[1] or '-'}) | {label} | {theirs[0]:,} ({theirs[1] or '-'}) | {mine[0] / max(theirs[0], 1):.2f} |")
EOF
