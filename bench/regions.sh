#!/usr/bin/env bash
# Multi-region benchmark: three regions over the simulated WAN (one voter, one learner and one gateway
# node per region; `gwadm bench regions`), then etcd over the same WAN, side by side. Reports each row's
# p50/p99 next to its theoretical floor: applies acknowledged (back to back, and spaced PAUSE_MS apart),
# apply -> served by every node, linearizable and serializable reads per region, session failovers
# committed and followed by a node of every region; and the leader killed LEADER_KILLS times, until an
# apply is acknowledged again (etcd's too).
#
# Usage: bash bench/regions.sh                 (OPS=100 FAILOVERS=30 PAUSE_MS=300 LEADER_KILLS=10; ~20 min)
#        WAN=us-east:eu-west=40ms,... bash bench/regions.sh
# Writes bench/results/regions-<stamp>.md. Needs root (etcd's members each get a private /etc/hosts)
# and etcd 3.4 (Debian's etcd-server, installed when missing, as ../shared/bench/store-bench.sh does).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
OPS="${OPS:-100}" FAILOVERS="${FAILOVERS:-30}" PAUSE_MS="${PAUSE_MS:-300}" LEADER_KILLS="${LEADER_KILLS:-10}"
WAN="${WAN:-us-east:eu-west=40ms,us-east:ap-south=110ms,eu-west:ap-south=75ms,jitter=2ms}"
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="$HERE/results/regions-$STAMP.md"
mkdir -p "$HERE/results"

if ! command -v etcd >/dev/null; then
  echo "installing etcd-server (Debian)..." >&2
  made_policy=0   # keep Debian's maintainer scripts from starting a system-wide etcd
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >&2
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

echo "building gw (release)..." >&2
(cd "$ROOT" && cargo build --release --bins -q)
GWADM="$ROOT/target/release/gwadm"

{
  echo "# Regions: gw vs etcd over one simulated WAN ($STAMP)"
  echo
  echo "WAN (one-way): \`$WAN\`; $(nproc) cores; \`bash bench/regions.sh\` (OPS=$OPS FAILOVERS=$FAILOVERS PAUSE_MS=$PAUSE_MS LEADER_KILLS=$LEADER_KILLS)"
  echo
  echo "## Back to back, with a learner per region; then etcd"
  echo
  "$GWADM" bench regions --wan "$WAN" --ops "$OPS" --learners --failovers "$FAILOVERS" --etcd
  echo
  echo "## Spaced ${PAUSE_MS} ms apart (no heartbeat or commit notice in flight when most applies arrive), and the leader killed; then etcd"
  echo
  "$GWADM" bench regions --wan "$WAN" --ops "$OPS" --pause-ms "$PAUSE_MS" --failovers 0 \
    --leader-kills "$LEADER_KILLS" --etcd
} | tee "$OUT"
echo "written: $OUT" >&2
