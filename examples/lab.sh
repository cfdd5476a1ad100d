#!/usr/bin/env bash
# The lab's curl walk-through (steps 4.2-4.3), against tokentap's agent.
#   cargo run --release -- --demo      # in one terminal
#   examples/lab.sh                    # in another (BASE=http://host:port to point elsewhere)
set -euo pipefail
BASE="${BASE:-http://127.0.0.1:8080}"
say() { printf '\n$ %s\n' "$*"; }

say "curl -X POST $BASE/new-conversation"
curl -fsS -X POST "$BASE/new-conversation"; echo

for q in "What is OpenTelemetry?" "How does a span differ from a trace?" "Thanks!"; do
  say "curl -X POST $BASE/chat -d '{\"message\": \"$q\"}'"
  curl -fsS -X POST "$BASE/chat" -H 'Content-Type: application/json' \
    -d "{\"message\": \"$q\", \"model\": \"gpt-4o-mini\"}"; echo
done

say "curl $BASE/conversation-summary"
summary=$(curl -fsS "$BASE/conversation-summary"); echo "$summary"
echo "$summary" | grep -q '"conversation_turns":3' || { echo "expected 3 turns" >&2; exit 1; }

say "curl $BASE/metrics | grep -E '^(llm|agent)_'"
curl -fsS "$BASE/metrics" | grep -E '^(llm_requests_total|llm_tokens_used_total|llm_cost_usd_total|agent_)'
