#!/usr/bin/env bash
# Runs every benchmark of a build (`make bench` builds them): prints each
# one's output, then a summary of their JSON result lines against the goals.
# Exits non-zero when a benchmark is missing or fails.
#   usage: scripts/bench.sh BUILD_DIR
set -uo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 BUILD_DIR" >&2
  exit 2
fi
bin="$1/bin"
benches=(abi_bench raw_nats_bench messaging_bench swap_bench fanout_bench filecopy_bench fleet_bench)
results=()
failed=()

for b in "${benches[@]}"; do
  exe="$bin/$b"
  echo "=== $b"
  if [[ ! -x "$exe" ]]; then
    echo "$b: no executable at $exe (configure with -DBOSUN_BUILD_BENCH=ON and build)" >&2
    failed+=("$b (missing)")
    continue
  fi
  out=$(mktemp)
  # A bench bounds its own phases; this only catches one that hangs. The
  # fleet starts 100 nodes and waits for Ansible: it gets longer.
  limit=300
  [[ $b == fleet_bench ]] && limit=900
  timeout "$limit" "$exe" | tee "$out"
  rc=${PIPESTATUS[0]}
  if [[ $rc -ne 0 ]]; then
    echo "$b: exited with status $rc" >&2
    failed+=("$b (exit $rc)")
  else
    line=$(grep '^{' "$out" | tail -n 1)
    if [[ -z "$line" ]]; then
      echo "$b: printed no JSON result line" >&2
      failed+=("$b (no result)")
    else
      results+=("$line")
    fi
  fi
  rm -f "$out"
  echo
done

echo "=== summary"
for r in "${results[@]}"; do echo "$r"; done
if command -v python3 >/dev/null && [[ ${#results[@]} -gt 0 ]]; then
  printf '%s\n' "${results[@]}" | python3 -c '
import json, sys
goals = {
    "abi": [("added_ns", "<", 100, "ns added per call by the ABI")],
    "messaging": [("rps_ratio", ">=", 0.5, "bosun requests/s over raw nats.c"),
                  ("p50_ratio", "<=", 3, "bosun p50 latency over raw nats.c"),
                  ("security_rps_ratio", ">=", 0.75, "requests/s signed over security.sign off")],
    "swap": [("swap_p50_ms", "<", 10, "swap p50, verified file to new version serving, probe excluded")],
    "filecopy": [("sender_hwm_kib", "<", 65536, "sender peak RSS (KiB) copying 256 MiB"),
                 ("receiver_hwm_kib", "<", 65536, "receiver peak RSS (KiB) copying 256 MiB")],
    "fleet": [("ping_max_ms", "<", 1000, "ping to 100 nodes, slowest round until every reply"),
              ("cli_true_max_ms", "<", 1000, "cli_command true to 100 nodes, slowest round"),
              ("idle_rss_max_kib", "<", 10240, "idle VmRSS (KiB) of the largest node"),
              ("start_serve_p50_ms", "<", 100, "start-up until a node answers a ping, p50")],
}
# Figures reported beside the goals, for comparison.
notes = {
    "fleet": [("idle_pss_median_kib", "idle Pss (KiB) per node, shared library pages divided"),
              ("idle_rss_file_median_kib", "of VmRSS, file-backed (shared library) KiB"),
              ("floor_rss_kib", "VmRSS (KiB) of a process with only nats.c, OpenSSL 3, libstdc++"),
              ("ansible_ms", "Ansible ad-hoc command true to 100 localhost aliases, ms"),
              ("ansible_to_bosun_cli", "Ansible time over bosun cli_command true p50")],
}
for line in sys.stdin:
    r = json.loads(line)
    for key, op, goal, what in goals.get(r.get("bench"), []):
        v = r.get(key)
        if v is None:
            continue
        ok = v < goal if op == "<" else v >= goal if op == ">=" else v <= goal
        name, status = r["bench"], "met" if ok else "MISSED"
        print(f"{name:>10}: {what}: {key} = {v} (goal {op} {goal}) {status}")
    for key, what in notes.get(r.get("bench"), []):
        if r.get(key) is not None:
            name = r["bench"]
            print(f"{name:>10}: {what}: {key} = {r[key]}")
'
fi
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
