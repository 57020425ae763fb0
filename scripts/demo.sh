#!/usr/bin/env bash
# Offline walkthrough (`make demo-offline`, no root) of the NetworkPolicy engine over the bundled scenarios.
# The live demo is `sudo make demo` (`netwatch demo`: netns lab, one eBPF agent per node).
set -euo pipefail
cd "$(dirname "$0")/.."
NW=".venv/bin/netwatch"
CLUSTER="fixtures/scenarios/shop/cluster"
bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

bold "The scenario: $CLUSTER (see fixtures/scenarios/shop/README.md)"
ls "$CLUSTER"

bold "Can the frontend reach the cart API on 8080?"
$NW policy check --cluster "$CLUSTER" --src shop/frontend-6d9f8-abcde --dst shop/cart-5c7b9-klmno --port 8080 2>/dev/null || true

bold "Can the frontend talk to the database directly?"
$NW policy check --cluster "$CLUSTER" --src shop/frontend-6d9f8-abcde --dst shop/db-0 --port postgres 2>/dev/null || true

bold "Can the node itself probe the database (kubelet health checks)?"
$NW policy check --cluster "$CLUSTER" --src 192.168.56.12 --dst shop/db-0 --port 5432 2>/dev/null || true

bold "Who may reach whom on TCP/8080?"
$NW policy matrix --cluster "$CLUSTER" --port 8080 --protocol TCP 2>/dev/null

bold "Static findings (the invalid object in broken.yaml is reported, the rest still loads)"
$NW policy lint --cluster "$CLUSTER"

AUDIT="fixtures/scenarios/audit"
bold "Observed traffic against policy: $AUDIT (flows as netwatch capture writes them)"
$NW analyze --cluster "$AUDIT/cluster" --flows "$AUDIT/flows/traffic.jsonl" --top 8

SUGGEST="fixtures/scenarios/suggest-shop"
OUT="$(mktemp -d)"
bold "Least-privilege policies from observed traffic, verified before they are written"
$NW suggest --cluster "$SUGGEST/cluster" --flows "$SUGGEST/flows/flows.jsonl" --out "$OUT" -o table
echo "suggested policies written to $OUT:"
ls "$OUT"

bold "Machine-readable output: add -o json (documented in README.md)"
echo "$NW policy check --cluster $CLUSTER --src shop/frontend-6d9f8-abcde --dst shop/db-0 --port 5432 -o json"
