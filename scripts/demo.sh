#!/usr/bin/env bash
# The main job, end to end on this machine: a local nats-server, a central
# node and two nodes, a command run on both, replies printed; then the
# example plugin, built against the installed SDK, answering from both.
# Everything lives under $BUILD/demo and is stopped on exit.
set -euo pipefail

BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "$ROOT" && cd "$BUILD" && pwd)
BOSUN=$BUILD/bin/bosun
DEMO=$BUILD/demo
NODES=(central ship1 ship2)

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

[ -x "$BOSUN" ] || { echo "demo: $BOSUN missing; run 'make build' first" >&2; exit 1; }
rm -rf "$DEMO"
mkdir -p "$DEMO"

say "Building examples/hello 1.0.0 and 1.1.0 against the installed SDK"
cmake --install "$BUILD" --prefix "$DEMO/prefix" >/dev/null
for v in 1.0.0 1.1.0; do
  cmake -S "$ROOT/examples/hello" -B "$DEMO/hello-$v" -DCMAKE_PREFIX_PATH="$DEMO/prefix" \
    -DHELLO_VERSION=$v -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$DEMO/hello-$v" >/dev/null
  echo "built $DEMO/hello-$v/hello.so"
done

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
say "Starting nats-server on 127.0.0.1:$port"
nats-server -a 127.0.0.1 -p "$port" >"$DEMO/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done

for n in "${NODES[@]}"; do
  mkdir -p "$DEMO/$n/plugins"
  cp "$BUILD"/plugins/*.so "$DEMO/$n/plugins/"
  cp "$DEMO/hello-1.0.0/hello.so" "$DEMO/$n/plugins/"
  chmod 755 "$DEMO/$n/plugins" "$DEMO/$n/plugins"/*.so
  cat >"$DEMO/$n/bosun.json" <<JSON
{
  "node": {"name": "$n", "central": "central", "dataDir": "data"},
  "broker": {"servers": ["nats://127.0.0.1:$port"], "reconnectWait": 0.5},
  "plugins": {"dir": "plugins"},
  "defaults": {"ackTimeout": 2, "retries": 3, "methodTimeout": 10},
  "log": {"level": "info"}
}
JSON
  "$BOSUN" config check --config "$DEMO/$n/bosun.json" >/dev/null
  "$BOSUN" run --config "$DEMO/$n/bosun.json" >"$DEMO/$n/node.log" 2>&1 &
  pids+=($!)
done
for n in "${NODES[@]}"; do
  for _ in $(seq 200); do [ -S "$DEMO/$n/data/bosun.sock" ] && break; sleep 0.05; done
  [ -S "$DEMO/$n/data/bosun.sock" ] || { echo "demo: node $n did not start:"; cat "$DEMO/$n/node.log"; exit 1; }
done
echo "nodes up: ${NODES[*]} (logs in $DEMO/<node>/node.log)"

C=(--config "$DEMO/central/bosun.json")

say "enrolment: the ships' keys wait on central until an operator accepts them"
for _ in $(seq 100); do
  pending=$("$BOSUN" keys "${C[@]}" list --json | python3 -c \
    'import json,sys; print(sum(1 for k in json.load(sys.stdin)["keys"] if k["state"]=="pending"))')
  [ "$pending" -ge 2 ] && break
  sleep 0.1
done
"$BOSUN" keys "${C[@]}" list
"$BOSUN" keys "${C[@]}" accept ship1 >/dev/null
"$BOSUN" keys "${C[@]}" accept ship2
echo "(each ship pins central's key on first contact; central hands every ship the keys it accepted)"

if [ -f "$BUILD/plugins/crypt.so" ]; then
  say "the cluster secret: made on central, sent RSA-OAEP encrypted to each accepted ship"
  # Each ship's RSA key (made at its first start) reaches central with its announcement.
  count_json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
  for _ in $(seq 200); do
    with_rsa=$("$BOSUN" keys "${C[@]}" list --json |
      count_json 'sum(1 for k in d["keys"] if k["state"]=="accepted" and k.get("rsa"))')
    [ "$with_rsa" -ge 2 ] && break
    sleep 0.1
  done
  "$BOSUN" send "${C[@]}" --to central --method push_cluster_secret --wait --timeout 10
  id=$("$BOSUN" keys "${C[@]}" list --json | count_json 'd["clusterSecret"]["keyId"]')
  for n in ship1 ship2; do
    for _ in $(seq 100); do
      got=$("$BOSUN" keys --config "$DEMO/$n/bosun.json" list --json |
        count_json 'd["clusterSecret"]["keyId"]')
      [ "$got" = "$id" ] && break
      sleep 0.1
    done
    echo "$n holds cluster secret ${got:-none}"
  done
  echo "(from here on, requests and replies cross the bus AES-256-GCM encrypted)"
fi

say "bosun plugins on ship1"
"$BOSUN" plugins --config "$DEMO/ship1/bosun.json"

say "ping ship1 and ship2 from central"
"$BOSUN" send "${C[@]}" --to ship1,ship2 --method ping --wait --timeout 10

if [ -f "$BUILD/plugins/cli.so" ]; then
  say "run a command on both: uname -sr; echo \$BOSUN_FROM_NODE"
  "$BOSUN" send "${C[@]}" --to ship1,ship2 --method cli_command --wait --timeout 10 \
    -- bash -c 'echo "$(uname -sr) on $(hostname), asked by $BOSUN_FROM_NODE"'
fi

say "the example plugin (hello 1.0.0, built out of tree) on both"
"$BOSUN" send "${C[@]}" --to ship1,ship2 --method greet --wait --timeout 10 -- operator

say "a Steward-style message file: ping ship2, reply written on central with REQToFile"
cat >"$DEMO/ping.json" <<'JSON'
[{"toNode": "ship2", "method": "REQPing", "replyMethod": "REQToFile",
  "directory": "/demo", "fileName": "ship2.ping", "ACKTimeout": 5, "retries": 3}]
JSON
"$BOSUN" send "${C[@]}" --wait --timeout 10 "$DEMO/ping.json"
echo "central wrote $DEMO/central/data/demo/ship2.ping: $(cat "$DEMO/central/data/demo/ship2.ping" 2>/dev/null)"

if [ -f "$BUILD/plugins/filecopy.so" ]; then
  say "a Steward copy: central asks ship1 to send a file to ship2 (ship2 allows only central)"
  # The chunks carry central's signed request, so ship2 runs them as central's.
  cat >"$DEMO/copy.json" <<JSON
[{"toNode": "ship1", "method": "REQCopyFileFrom",
  "methodArgs": ["$DEMO/ship1/bosun.json", "ship2", "incoming/ship1.json"],
  "methodTimeout": 30, "ACKTimeout": 5, "retries": 3}]
JSON
  "$BOSUN" send "${C[@]}" --wait --timeout 30 "$DEMO/copy.json"
  sha256sum "$DEMO/ship1/bosun.json" "$DEMO/ship2/data/incoming/ship1.json"
fi

if "$BOSUN" --help 2>/dev/null | grep -q update-plugin; then
  say "hot update of hello 1.0.0 -> 1.1.0 on both nodes, while they run"
  "$BOSUN" update-plugin "${C[@]}" --to ship1,ship2 --file "$DEMO/hello-1.1.0/hello.so" --wait
  "$BOSUN" send "${C[@]}" --to ship1,ship2 --method greet --wait --timeout 10 -- operator
fi

say "delivery counters on central"
python3 - "$DEMO/central/data/bosun.sock" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b'{"op":"status"}')
buf = b""
while not buf.endswith(b"\n"):
    chunk = s.recv(65536)
    if not chunk: break
    buf += chunk
print(json.dumps(json.loads(buf)["counters"]))
PY
say "demo done; stopping nodes and broker"
