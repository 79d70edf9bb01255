#!/usr/bin/env bash
# Session persistence benchmark: requests on an established session (Cookie persistence) against the
# same route rule without persistence, side by side on one gw-node over 4 echo backends, then the rate
# of new sessions (every request without a cookie starts one: token signed, activity batched to the
# store). wrk, release build; REPS rounds of DURATION seconds, alternating the two.
#   bash bench/sessions.sh            # REPS=3 DURATION=10 CONNS=32
set -euo pipefail
# Plaintext on loopback, as the proxy bench runs (every gw binary reads GW_INSECURE).
export GW_INSECURE=true
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${GW_BIN:-$ROOT/target/release}"
REPS=${REPS:-3} DURATION=${DURATION:-10} CONNS=${CONNS:-32}
STORE=127.0.0.1:18390 PORT=18380 NODE=127.0.0.2
DIR="$(mktemp -d /tmp/gw-session-bench.XXXXXX)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }

"$BIN/gw-api-server" --id 1 --listen "$STORE" --peers "1=$STORE" --data-dir "$DIR/store" 2>"$DIR/store.log" &
refs=""
{
  printf 'apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: bench}\nspec: {controllerName: gw.dev/gateway-node}\n'
  printf -- '---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: bench, namespace: bench}\nspec:\n  gatewayClassName: bench\n  listeners: [{name: http, port: %s, protocol: HTTP}]\n' "$PORT"
  for i in 0 1 2 3; do
    port=$((18370 + i))
    "$BIN/gwadm" echo-server --listen "127.0.0.1:$port" --name "b$i" --namespace bench 2>/dev/null &
    printf -- '---\napiVersion: v1\nkind: Service\nmetadata: {name: b%s, namespace: bench}\nspec: {ports: [{name: http, port: 80}]}\n' "$i"
    printf -- '---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: b%s, namespace: bench, labels: {kubernetes.io/service-name: b%s}}\naddressType: IPv4\nports: [{name: http, port: %s}]\nendpoints: [{addresses: [127.0.0.1], targetRef: {kind: Pod, name: b%s}}]\n' "$i" "$i" "$port" "$i"
  done
  printf -- '---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: app, namespace: bench}\nspec:\n  parentRefs: [{name: bench}]\n  rules:\n'
  for rule in plain sess; do
    sp=""
    [ "$rule" = sess ] && sp="sessionPersistence: {sessionName: gw-sess, idleTimeout: 1h}, "
    printf '  - {matches: [{path: {type: PathPrefix, value: /%s}}], %sbackendRefs: [{name: b0, port: 80}, {name: b1, port: 80}, {name: b2, port: 80}, {name: b3, port: 80}]}\n' "$rule" "$sp"
  done
} > "$DIR/config.yaml"
"$BIN/gwadm" --server "$STORE" --retry-for 30 apply -f "$DIR/config.yaml" >/dev/null
"$BIN/gw-node" --store "$STORE" --gateway-class bench --bind-address "$NODE" --data-dir "$DIR/node" 2>"$DIR/node.log" &
for _ in $(seq 100); do
  cookie=$(curl -s -D - -o /dev/null "http://$NODE:$PORT/sess" | sed -n 's/^[Ss]et-[Cc]ookie: \([^;]*\).*/\1/p')
  [ -n "$cookie" ] && break
  sleep 0.2
done
[ -n "$cookie" ] || { echo "no session cookie from gw-node"; tail "$DIR/node.log"; exit 1; }

rate() { sed -n 's/^Requests\/sec: *//p'; }
lat() { sed -n 's/^ *Latency *\([^ ]*\).*/\1/p'; }
echo "# established session vs no persistence ($REPS x ${DURATION}s, $CONNS connections, 1 wrk thread)"
echo "| round | plain req/s | plain avg latency | session req/s | session avg latency | session/plain |"
echo "|---|---:|---:|---:|---:|---:|"
for r in $(seq "$REPS"); do
  p=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://$NODE:$PORT/plain")
  s=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "Cookie: $cookie" "http://$NODE:$PORT/sess")
  pr=$(rate <<<"$p") sr=$(rate <<<"$s")
  echo "| $r | $pr | $(lat <<<"$p") | $sr | $(lat <<<"$s") | $(python3 -c "print(f'{$sr/$pr:.3f}')") |"
done
echo
echo "# new sessions (no cookie: every request starts a session), ${DURATION}s"
n=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://$NODE:$PORT/sess")
echo "new sessions/s on one node: $(rate <<<"$n") (avg latency $(lat <<<"$n"))"
