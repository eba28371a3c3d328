#!/usr/bin/env python3
"""Figures from a `difftracker replay` report: ARM writes per created Service, 429s, virtual
time to converge, and the bound the operation cap and the write budget set.

    summary.py REPORT                                  # one JSON line
    summary.py REPORT --row '| {writes} | {throttled_429} |' [--cap N] [--budget CAP/REFILL] [k=v ...]

With --cap, `bound` is max(creates x SECONDS_PER_CREATE / cap, (writes - burst) / refill) and
`ratio` the virtual time over it."""
import argparse
import json

# The calls of one create under bench/economy.sh's latencies, in series: public IP (2 s mean),
# load balancer (5.5 s), registration (about 1 s; batched).
SECONDS_PER_CREATE = 8.5

p = argparse.ArgumentParser()
p.add_argument("report")
p.add_argument("--row")
p.add_argument("--cap", type=int)
p.add_argument("--budget")
p.add_argument("extra", nargs="*")
a = p.parse_intermixed_args()

r = json.load(open(a.report))
calls = r["cloud_calls"]
writes = sum(n for k, n in calls.items() if not k.startswith("GET "))
# Deleted Services are no longer tracked: their entries carry only their calls.
created = sum(1 for o in r["operations"].values() if o.get("kind", "inbound") == "inbound")
s = {
    "converged": r["converged"],
    "oracle": r["oracle"]["matches"],
    "created_services": created,
    "cloud_calls": sum(calls.values()),
    "writes": writes,
    "writes_per_created_service": round(writes / max(created, 1), 2),
    "update_services": calls.get("POST updateServices", 0),
    "update_address_locations": calls.get("POST updateAddressLocations", 0),
    "throttled_429": sum(n for k, n in r["cloud_errors"].items() if " 429" in k),
    "writes_paced": r["replay"].get("writes_paced"),
    "virtual_s": round(r["virtual_ms"] / 1000, 1),
}
if a.cap:
    ops = created * SECONDS_PER_CREATE / a.cap
    budget = 0.0
    if a.budget and a.budget != "none":
        burst, refill = (int(x) for x in a.budget.split("/"))
        budget = max(0, writes - burst) / refill
    s["bound"] = round(max(ops, budget))
    s["ratio"] = round(s["virtual_s"] / max(s["bound"], 1), 2)
for kv in a.extra:
    k, v = kv.split("=", 1)
    s[k] = v
print(a.row.format(**s) if a.row else json.dumps(s))
