#!/usr/bin/env bash
# A fleet on one machine: one nats-server and N `bosun run` nodes on
# loopback (ship001 .. shipN, with the cli module) plus the "central" node to
# send from, each its own process, config and data folder under DIR.
#
#   usage: scripts/fleet.sh start [-n N] [-d DIR] [-b BUILD_DIR]
#          scripts/fleet.sh stop [-d DIR]
#          scripts/fleet.sh status [-d DIR]
#
#   N          ships, default 100
#   DIR        default ${TMPDIR:-/tmp}/bosun-fleet; must not exist at start
#   BUILD_DIR  where bin/bosun and plugins/cli.so are, default ./build
#
# Example, once started:
#   build/bin/bosun send --config DIR/central/bosun.json \
#     --to "$(cat DIR/ships)" --method cli_command --wait -- true
#
# `stop` sends SIGTERM to every process it started (pids in DIR/pids),
# SIGKILL to any still there after 10 s, and removes DIR.
set -Eeuo pipefail

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
n=100
dir="${TMPDIR:-/tmp}/bosun-fleet"
build="build"
while getopts "n:d:b:" opt; do
  case "$opt" in
    n) n="$OPTARG" ;;
    d) dir="$OPTARG" ;;
    b) build="$OPTARG" ;;
    *) cmd="" ;;
  esac
done

usage() {
  sed -n '7,10p' "$0" | sed 's/^# *//' >&2
  exit 2
}

# The pids in DIR/pids that still run what this script started there.
live_pids() {
  [[ -f "$dir/pids" ]] || return 0
  while read -r pid; do
    [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || continue
    if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$dir/"; then echo "$pid"; fi
  done <"$dir/pids"
}

stop_fleet() {
  local pids
  pids=$(live_pids)
  if [[ -n "$pids" ]]; then
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 100); do
      [[ -z "$(live_pids)" ]] && break
      sleep 0.1
    done
    pids=$(live_pids)
    if [[ -n "$pids" ]]; then
      echo "fleet: SIGKILL to $(echo "$pids" | wc -w) process(es) still running after 10 s" >&2
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
    fi
  fi
  if [[ -f "$dir/pids" ]]; then
    rm -rf "$dir"
    echo "fleet: stopped, $dir removed"
  elif [[ -e "$dir" ]]; then
    echo "fleet: $dir has no pids file: not a fleet folder, left alone" >&2
    return 1
  else
    echo "fleet: nothing at $dir"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

node_config() {  # name modules...
  local name="$1"
  mkdir -p "$dir/$name/plugins"
  chmod 0755 "$dir/$name/plugins"
  shift
  for m in "$@"; do install -m 0755 "$build/plugins/$m.so" "$dir/$name/plugins/$m.so"; done
  # A lab fleet: central accepts the ships' keys without an operator
  # (security.autoAccept); the ships pin central's key on first contact.
  local security='{}'
  [[ "$name" == central ]] && security='{"autoAccept": ["ship*"]}'
  cat >"$dir/$name/bosun.json" <<EOF
{
  "node": {"name": "$name", "central": "central", "dataDir": "data"},
  "broker": {"servers": ["nats://127.0.0.1:$port"]},
  "plugins": {"dir": "plugins"},
  "security": $security,
  "log": {"level": "warn"}
}
EOF
}

start_fleet() {
  [[ "$n" =~ ^[0-9]+$ && "$n" -ge 1 && "$n" -le 999 ]] || {
    echo "fleet: -n must be 1..999, got $n" >&2
    exit 2
  }
  local bosun="$build/bin/bosun"
  [[ -x "$bosun" ]] || {
    echo "fleet: no $bosun (build first, or pass -b BUILD_DIR)" >&2
    exit 1
  }
  [[ -f "$build/plugins/cli.so" ]] || {
    echo "fleet: no $build/plugins/cli.so" >&2
    exit 1
  }
  command -v nats-server >/dev/null || {
    echo "fleet: nats-server is not installed (scripts/install-deps.sh)" >&2
    exit 1
  }
  if [[ -e "$dir" ]]; then
    echo "fleet: $dir exists (stop that fleet first: $0 stop -d $dir)" >&2
    exit 1
  fi
  bosun=$(realpath "$bosun")
  build=$(realpath "$build")
  mkdir -p "$dir"
  dir=$(realpath "$dir")
  : >"$dir/pids"
  # From here on a failure stops what was started.
  trap 'echo "fleet: start failed; stopping" >&2; trap - ERR; stop_fleet >/dev/null; exit 1' ERR INT TERM

  port=$(free_port)
  echo "listen: 127.0.0.1:$port" >"$dir/nats.conf"
  nats-server -c "$dir/nats.conf" >"$dir/nats-server.log" 2>&1 &
  echo $! >>"$dir/pids"

  node_config central
  local ships=()
  for i in $(seq -f "%03g" 1 "$n"); do
    node_config "ship$i" cli
    ships+=("ship$i")
  done
  (IFS=,; echo "${ships[*]}") >"$dir/ships"

  for name in central "${ships[@]}"; do
    "$bosun" run --config "$dir/$name/bosun.json" >"$dir/$name/bosun-run.log" 2>&1 &
    echo $! >>"$dir/pids"
  done
  # Ready when every socket is there (bounded: 60 s).
  local deadline=$((SECONDS + 60))
  for name in central "${ships[@]}"; do
    while [[ ! -S "$dir/$name/data/bosun.sock" ]]; do
      if ((SECONDS >= deadline)); then
        echo "fleet: $name did not come up in 60 s; see $dir/$name/bosun-run.log" >&2
        false
      fi
      sleep 0.1
    done
  done
  trap - ERR INT TERM
  echo "fleet: nats-server on 127.0.0.1:$port, central + $n ships under $dir"
  echo "  send: $bosun send --config $dir/central/bosun.json --to \"\$(cat $dir/ships)\" --method ping --wait"
  echo "  stop: $0 stop -d $dir"
}

case "$cmd" in
  start) start_fleet ;;
  stop) stop_fleet ;;
  status)
    echo "fleet at $dir: $(live_pids | wc -l) process(es) running"
    ;;
  *) usage ;;
esac
