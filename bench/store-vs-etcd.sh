#!/usr/bin/env bash
# Store benchmark, side by side on this machine: etcd 3.4 (../shared/bench/store-bench.sh) and gw
# (`gwadm bench store`, the same workloads and parameters) on 3-member loopback clusters.
#
# Usage: bash bench/store-vs-etcd.sh            (REPS=3 DURATION=10 as the etcd anchors; ~30-50 min)
#        REPS=1 DURATION=3 LOAD_GATE=0 bash bench/store-vs-etcd.sh   (a quick look, noisy)
# Writes bench/results/store-<stamp>.md with both tables and the ratios.
# gw's members speak Raft only to members with their certificates, so gw runs with mutual TLS here
# while the etcd anchors run plaintext: the comparison is tilted against gw by TLS's cost.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SHARED="${SHARED:-$ROOT/../shared}"
REPS="${REPS:-3}" DURATION="${DURATION:-10}" LOAD_GATE="${LOAD_GATE:-0.6}"
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="$HERE/results/store-$STAMP.md"
DATA="${DATA:-/tmp/gw-store-bench}"
mkdir -p "$HERE/results"

echo "building gw (release)..." >&2
(cd "$ROOT" && cargo build --release --bins -q)
BIN="$ROOT/target/release"

echo "== etcd (../shared/bench/store-bench.sh)" >&2
REPS=$REPS DURATION=$DURATION LOAD_GATE=$LOAD_GATE OUT_DIR=/tmp/gw-bench-etcd \
  bash "$SHARED/bench/store-bench.sh" > /tmp/gw-bench-etcd.txt
ETCD_JSON="$(grep '^JSON: ' /tmp/gw-bench-etcd.txt | tail -1 | sed 's/^JSON: //')"

echo "== gw" >&2
rm -rf "$DATA"; mkdir -p "$DATA"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
PKI="$DATA/pki"
"$BIN/gwadm" pki init --dir "$PKI" >/dev/null
for i in 1 2 3; do "$BIN/gwadm" pki issue --dir "$PKI" member --id $i --host 127.0.0.1 >/dev/null; done
"$BIN/gwadm" pki issue --dir "$PKI" admin --name bench >/dev/null
export GW_TLS_CA="$PKI/ca.crt" GW_TLS_CERT="$PKI/admin-bench.crt" GW_TLS_KEY="$PKI/admin-bench.key"
PEERS="1=127.0.0.1:24791,2=127.0.0.1:24792,3=127.0.0.1:24793"
for i in 1 2 3; do
  GW_TLS_CERT="$PKI/member-$i.crt" GW_TLS_KEY="$PKI/member-$i.key" \
    "$BIN/gw-api-server" --id $i --listen 127.0.0.1:2479$i --data-dir "$DATA/m$i" --peers "$PEERS" 2>"$DATA/m$i.log" &
  PIDS+=($!)
done
sleep 3
LEADER=$("$BIN/gwadm" --server 127.0.0.1:24791,127.0.0.1:24792,127.0.0.1:24793 cluster status -o json \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])')
FOLLOWER=$(( LEADER % 3 + 1 ))
"$BIN/gwadm" bench store --endpoint 127.0.0.1:2479$LEADER --follower 127.0.0.1:2479$FOLLOWER \
  --reps "$REPS" --duration "$DURATION" --load-gate "$LOAD_GATE" > /tmp/gw-bench-gw.txt
GW_JSON="$(grep '^JSON: ' /tmp/gw-bench-gw.txt | tail -1 | sed 's/^JSON: //')"
cleanup

python3 - "$ETCD_JSON" "$GW_JSON" > "$OUT" <<'PY'
import json, sys
etcd, gw = json.loads(sys.argv[1]), json.loads(sys.argv[2])
def rows(doc):
    # store-bench's JSON lists results under "results" (or "workloads"); gw's under "results".
    items = doc.get("results") or doc.get("workloads") or []
    out = {}
    for r in items:
        name = r.get("workload") or r.get("name")
        ops = r.get("ops_per_s") or r.get("ops_s") or 0
        p50 = r.get("p50_ms") if "p50_ms" in r else (r.get("p50_us", 0) / 1000)
        p99 = r.get("p99_ms") if "p99_ms" in r else (r.get("p99_us", 0) / 1000)
        out[name] = (ops, p50, p99)
    return out
e, g = rows(etcd), rows(gw)
print("| workload | etcd ops/s | gw ops/s | gw/etcd | etcd p50 ms | gw p50 ms | etcd p99 ms | gw p99 ms |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for w in g:
    if w not in e:
        continue
    eo, ep50, ep99 = e[w]; go, gp50, gp99 = g[w]
    ratio = f"{go/eo:.2f}" if eo else "-"
    print(f"| {w} | {eo:.0f} | {go:.0f} | {ratio} | {ep50:.3f} | {gp50:.3f} | {ep99:.3f} | {gp99:.3f} |")
PY
{ echo; echo "## etcd (raw)"; cat /tmp/gw-bench-etcd.txt; echo; echo "## gw (raw)"; cat /tmp/gw-bench-gw.txt; } >> "$OUT"
cat "$OUT"
