#!/usr/bin/env bash
# Reproduces every figure of BENCHMARKS.md: replay wall time and peak memory for generated traces
# (wasm and native engines), the engine-only PEER-BENCH lifecycle, and the start-up pass after a
# crash against a full cloud (STARTUP_SIZES="1000 10000"), hot swap (SWAP_SIZES="1000 10000",
# SWAPS=20), what `replay --html` costs (HTML_SIZES="1000 10000"), and many tenants in one process
# (`bench-tenants`: density at DENSITY_TENANTS="100 1000" tenants of 100 Services, fair share of 10
# healthy tenants beside 2 misbehaving ones for FAIR_SECONDS=30 s). Release build, one run per
# cell (the machine is shared: run it twice and keep the lower figure when they differ).
#
#   bash bench/run.sh            # all sizes
#   SIZES="100 1000" bash bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --release -p difftracker --bin difftracker >/dev/null
bin="${CARGO_TARGET_DIR:-target}/release/difftracker"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "## Replay (virtual time, in-process emulator)"
echo
echo "| services | trace events | engine | wall time | peak memory | converged | same report as the other engine |"
echo "|---|---|---|---|---|---|---|"
for n in ${SIZES:-100 1000 5000}; do
  nodes=$(( n / 10 > 3 ? n / 10 : 3 ))
  "$bin" gen-trace --services "$n" --nodes "$nodes" --endpoints 10 --churn medium --seed 1 -o "$work/trace-$n.jsonl" 2>/dev/null
  events=$(wc -l < "$work/trace-$n.jsonl")
  rows=()
  for engine in wasm native; do
    /usr/bin/time -f "%e %M" -o "$work/time" "$bin" replay --trace "$work/trace-$n.jsonl" --engine "$engine" \
      --report "$work/report-$n-$engine.json" > "$work/out" 2>&1 || true
    read -r secs kb < "$work/time"
    converged=$(grep -o '"converged": *[a-z]*' "$work/report-$n-$engine.json" | head -1 | sed 's/.*: *//')
    rows+=("| $n | $events | $engine | ${secs} s | $(( kb / 1024 )) MiB | $converged |")
  done
  same=no
  cmp -s "$work/report-$n-wasm.json" "$work/report-$n-native.json" && same=yes
  for row in "${rows[@]}"; do echo "$row $same |"; done
done
echo
for n in ${ENGINE_SIZES:-1000 10000}; do
  for engine in native wasm; do
    echo "## Engine lifecycle: $n services, $engine"
    echo
    "$bin" bench-engine --services "$n" --engine "$engine" --single-events "$n"
    echo
  done
done
echo
echo "## Start-up pass after a crash (the cloud and the cluster already hold every Service)"
echo
echo "| services | engine | start-up, virtual | start-up, wall | cloud calls | list calls | Kubernetes writes |"
echo "|---|---|---|---|---|---|---|"
for n in ${STARTUP_SIZES:-1000 10000}; do
  nodes=$(( n / 10 > 3 ? n / 10 : 3 ))
  "$bin" gen-trace --services "$n" --nodes "$nodes" --endpoints 10 --churn none --seed 1 -o "$work/startup-$n.jsonl" 2>/dev/null
  # Every call answers after 50-400 ms, so the virtual start-up time says what the pass waits for.
  echo '{"seed": 1, "until_ms": 86400000, "rules": [{"call": "*", "latency_ms": [50, 400]}]}' > "$work/latency.json"
  for engine in native wasm; do
    # The crash lands long after the trace settled: the restarted host lists a full cloud.
    "$bin" replay --trace "$work/startup-$n.jsonl" --engine "$engine" --crash-at-ms 10800000 --faults "$work/latency.json" \
      --report "$work/startup-$n-$engine.json" > "$work/out" 2>&1 || { cat "$work/out"; exit 1; }
    wall=$(grep -o 'lists), [0-9.]*[mµn]*s of wall' "$work/out" | sed 's/lists), //; s/ of wall//')
    python3 - "$work/startup-$n-$engine.json" "$n" "$engine" "$wall" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["restarts"][0]
print(f"| {sys.argv[2]} | {sys.argv[3]} | {r['startup_ms']} ms | {sys.argv[4]} | {r['startup_cloud_calls']} | {r['startup_list_calls']} | {r['startup_kube_writes']} |")
PY
  done
done
echo
echo "## Hot swap (issue 14): background swaps against plain stop-snapshot-restore swaps"
echo
echo "| services | swaps | pause p50 / p99 / max | plain pause p50 / p99 / max | p99 ratio | snapshot binary / JSON | encode binary / JSON | decode binary / JSON |"
echo "|---|---|---|---|---|---|---|---|"
for n in ${SWAP_SIZES:-1000 10000}; do
  "$bin" bench-swap --services "$n" --swaps "${SWAPS:-20}" > "$work/swap-$n.json"
  python3 - "$work/swap-$n.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
p, q, e, j = b["pause"], b["plain_pause"], b["binary"], b["json"]
print(f"| {b['services']} | {b['swaps']} | {p['p50_ms']:.2f} / {p['p99_ms']:.2f} / {p['max_ms']:.2f} ms "
      f"| {q['p50_ms']:.1f} / {q['p99_ms']:.1f} / {q['max_ms']:.1f} ms | {b['p99_ratio']:.0f}x "
      f"| {e['bytes']:,} / {j['bytes']:,} B ({j['bytes']/e['bytes']:.1f}x) "
      f"| {e['encode_ms']:.1f} / {j['encode_ms']:.1f} ms | {e['decode_ms']:.1f} / {j['decode_ms']:.1f} ms |")
PY
done
echo
echo "## Replay with --html (the timeline's cost)"
echo
echo "| services | engine | without --html | with --html | page size |"
echo "|---|---|---|---|---|"
for n in ${HTML_SIZES:-1000 10000}; do
  nodes=$(( n / 10 > 3 ? n / 10 : 3 ))
  [ -f "$work/trace-$n.jsonl" ] || "$bin" gen-trace --services "$n" --nodes "$nodes" --endpoints 10 --churn medium --seed 1 -o "$work/trace-$n.jsonl" 2>/dev/null
  for engine in wasm; do
    /usr/bin/time -f "%e" -o "$work/t0" "$bin" replay --trace "$work/trace-$n.jsonl" --engine "$engine" --report "$work/h0.json" > /dev/null 2>&1 || true
    /usr/bin/time -f "%e" -o "$work/t1" "$bin" replay --trace "$work/trace-$n.jsonl" --engine "$engine" --report "$work/h1.json" \
      --html "$work/timeline-$n.html" > /dev/null 2>&1 || true
    echo "| $n | $engine | $(cat "$work/t0") s | $(cat "$work/t1") s | $(( $(stat -c %s "$work/timeline-$n.html") / 1024 )) KiB |"
  done
done
echo
echo "## Many tenants in one process (bench-tenants)"
echo
echo "| tenants x Services | resident converged | per tenant | guest linear memory per tenant | converge | endpoint change p50 / p99 / max |"
echo "|---|---|---|---|---|---|"
for n in ${DENSITY_TENANTS:-100 1000}; do
  "$bin" bench-tenants --tenants "$n" --services 100 --seconds 5 --json > "$work/tenants-$n.json" 2>/dev/null
  python3 - "$work/tenants-$n.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
c = b["change_converge"]
print(f"| {b['tenants']:,} x {b['services_per_tenant']} | {b['converged']['rss_bytes']/2**20:,.0f} MiB | {b['mib_per_tenant']:.2f} MiB "
      f"| {b['guest_mib_per_tenant']:.2f} MiB | {b['converge_s']:.1f} s | {c['p50_ms']:.2f} / {c['p99_ms']:.2f} / {c['max_ms']:.2f} ms |")
PY
done
echo
echo "| 10 healthy tenants x 100 Services, beside | backoff | endpoint change p50 / p99 / max | p99 / alone | misbehaving traps |"
echo "|---|---|---|---|---|"
alone=""
for run in "0:" "2:--no-backoff" "2:--no-low-priority" "2:"; do
  k=${run%%:*}; flags=${run#*:}
  "$bin" bench-tenants --tenants 10 --services 100 --misbehaving "$k" --seconds "${FAIR_SECONDS:-30}" $flags --json > "$work/fair.json" 2>/dev/null
  alone=$(python3 - "$work/fair.json" "$k" "$flags" "$alone" <<'PY'
import json, sys
b = json.load(open(sys.argv[1])); k, flags, alone = sys.argv[2], sys.argv[3], sys.argv[4]
c = b["change_converge"]
alone = float(alone) if alone else c["p99_ms"]
mode = "off" if "--no-backoff" in flags else ("on, normal priority" if "--no-low-priority" in flags else "on")
print(f"| {k} misbehaving | {mode} | {c['p50_ms']:.2f} / {c['p99_ms']:.2f} / {c['max_ms']:.2f} ms | {c['p99_ms']/alone:.2f}x | {b['misbehaving']['traps']} |", file=sys.stderr)
print(alone)
PY
)
done 2>&1
