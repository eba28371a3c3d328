#!/usr/bin/env bash
# The ARM economy figures of BENCHMARKS.md (issue 15): ARM writes per created Service, the
# subscription's write budget (emulator rate limits, host pacing), and the virtual time to
# converge under realistic latencies as the operation cap and the write budget move. Every figure
# here is virtual time or a count, the same on every run and machine; release build.
#
#   bash bench/economy.sh                       # SIZES="1000 10000" CAPS="10 50 200"
#   SIZES=1000 bash bench/economy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --release -p difftracker --bin difftracker >/dev/null
bin="${CARGO_TARGET_DIR:-target}/release/difftracker"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
summary() { python3 bench/summary.py "$@"; }

echo "## ARM writes per created Service (churn medium, no latency)"
echo
echo '| services | created | writes | per created Service | updateServices | updateAddressLocations | converged, oracle |'
echo '|---|---|---|---|---|---|---|'
for n in ${SIZES:-1000 10000}; do
  "$bin" gen-trace --services "$n" --nodes $(( n / 10 )) --endpoints 10 --churn medium --seed 1 -o "$work/t$n.jsonl" 2>/dev/null
  "$bin" replay --trace "$work/t$n.jsonl" --report "$work/r$n.json" >/dev/null 2>&1 || true
  summary "$work/r$n.json" n="$n" \
    --row '| {n} | {created_services} | {writes} | **{writes_per_created_service}** | {update_services} | {update_address_locations} | {converged}, {oracle} |'
done
echo

echo "## Under ARM's write budget (200, refilled at 10/s; churn medium)"
echo
echo '| services | pacing | writes | 429s | writes paced | virtual time to converge | (writes - 200) / 10 per s |'
echo '|---|---|---|---|---|---|---|'
for n in ${SIZES:-1000 10000}; do
  for pacing in on off; do
    extra=()
    [ "$pacing" = off ] && extra=(--write-budget off)
    "$bin" replay --trace "$work/t$n.jsonl" --report "$work/p.json" --rate-limits "${extra[@]}" >/dev/null 2>&1 || true
    summary "$work/p.json" --cap 1000000 --budget 200/10 n="$n" p="$pacing" \
      --row '| {n} | {p} | {writes} | {throttled_429} | {writes_paced} | {virtual_s} s | {bound} s |'
  done
done
echo

# Latencies as Azure shows them: public IP and NAT gateway PUTs of seconds, load balancer PUTs
# of several, NRP POSTs around one.
cat > "$work/latency.json" <<'JSON'
{"seed": 1, "until_ms": 86400000, "rules": [
  {"call": "PUT publicIPAddresses", "latency_ms": [1000, 3000]},
  {"call": "PUT natGateways", "latency_ms": [1000, 3000]},
  {"call": "PUT loadBalancers", "latency_ms": [3000, 8000]},
  {"call": "DELETE loadBalancers", "latency_ms": [2000, 5000]},
  {"call": "DELETE publicIPAddresses", "latency_ms": [1000, 3000]},
  {"call": "POST updateServices", "latency_ms": [500, 1500]},
  {"call": "POST updateAddressLocations", "latency_ms": [500, 1500]}
]}
JSON
echo "## Convergence under latency: a burst of N creates (churn none), operation cap x write budget"
echo
echo 'Bound: max(creates x 8.5 s of calls per create / cap, (writes - burst) / refill); virtual seconds.'
echo
echo '| services | cap | write budget | writes | 429s | converged in | bound | ratio |'
echo '|---|---|---|---|---|---|---|---|'
for n in ${SIZES:-1000 10000}; do
  "$bin" gen-trace --services "$n" --nodes $(( n / 10 )) --endpoints 10 --churn none --seed 1 -o "$work/b$n.jsonl" 2>/dev/null
  for cap in ${CAPS:-10 50 200}; do
    for budget in none 200/10 1000/50; do
      extra=()
      [ "$budget" != none ] && extra=(--rate-limits "$budget")
      "$bin" replay --trace "$work/b$n.jsonl" --report "$work/c.json" --faults "$work/latency.json" \
        --operations-in-flight "$cap" "${extra[@]}" >/dev/null 2>&1 || true
      summary "$work/c.json" --cap "$cap" --budget "$budget" n="$n" b="$budget" c="$cap" \
        --row '| {n} | {c} | {b} | {writes} | {throttled_429} | {virtual_s} s | {bound} s | {ratio} |'
    done
  done
done
