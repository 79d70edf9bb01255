#!/usr/bin/env bash
# GATEWAY_CMD for ../shared/bench/proxy-bench.sh: a one-member store and one gw-node (one worker thread)
# routing :18200 (HTTP/1.1) to $BACKEND_ADDR and :18201 (h2c) to $BACKEND_H2_ADDR (h2c, appProtocol
# kubernetes.io/h2c). Runs in the foreground until the bench stops its process group. GW_NODE_ARGS: more
# gw-node flags (e.g. --health-check-interval-ms 1000).
set -euo pipefail
# Plaintext on loopback, as the nginx/HAProxy/etcd anchors run (every gw binary reads GW_INSECURE).
export GW_INSECURE=true
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${GW_BIN:-$ROOT/target/release}"
STORE="${GW_BENCH_STORE:-127.0.0.1:18290}"
DIR="$(mktemp -d /tmp/gw-proxy-bench.XXXXXX)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT
: "${BACKEND_ADDR:?set by proxy-bench.sh}" "${BACKEND_H2_ADDR:?set by proxy-bench.sh}"

"$BIN/gw-api-server" --id 1 --listen "$STORE" --peers "1=$STORE" --data-dir "$DIR/store" 2>"$DIR/store.log" &
slice() { # name addr
  cat <<Y
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: $1, namespace: bench, labels: {kubernetes.io/service-name: $1}}
addressType: IPv4
ports: [{name: http, port: ${2##*:}}]
endpoints: [{addresses: [${2%:*}]}]
Y
}
{
cat <<Y
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: bench}
spec: {controllerName: gw.dev/gateway-node}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bench, namespace: bench}
spec:
  gatewayClassName: bench
  listeners:
  - {name: h1, port: 18200, protocol: HTTP}
  - {name: h2c, port: 18201, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: h1, namespace: bench}
spec:
  parentRefs: [{name: bench, sectionName: h1}]
  rules: [{backendRefs: [{name: backend-h1, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: h2c, namespace: bench}
spec:
  parentRefs: [{name: bench, sectionName: h2c}]
  rules: [{backendRefs: [{name: backend-h2, port: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: backend-h1, namespace: bench}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: backend-h2, namespace: bench}
spec: {ports: [{name: http, port: 80, appProtocol: kubernetes.io/h2c}]}
Y
slice backend-h1 "$BACKEND_ADDR"
slice backend-h2 "$BACKEND_H2_ADDR"
} > "$DIR/config.yaml"
"$BIN/gwadm" --server "$STORE" --retry-for 30 apply -f "$DIR/config.yaml" >"$DIR/apply.log"
"$BIN/gw-node" --store "$STORE" --gateway-class bench --bind-address 127.0.0.1 --workers "${GW_WORKERS:-1}" ${GW_NODE_ARGS:-} \
  --data-dir "$DIR/node" 2>"$DIR/node.log" &
wait
