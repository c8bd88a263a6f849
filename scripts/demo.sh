#!/usr/bin/env bash
# `make demo`: the main job end to end against the bundled simulator, on loopback.
# Starts `harvester sim` with faults and a rate limit, harvests a call list that also holds a
# duplicate, an unknown call and a hostile id, then shows the summary and the failures.
set -euo pipefail
out=demo-out
rm -rf "$out"
mkdir -p "$out"

harvester sim --port 0 --calls 300 --rate-limit 150 \
  --fault 503=0.04 --fault reset=0.03 --fault truncate=0.03 --fault html=0.03 \
  --ready-file "$out/sim.url" --ids-file "$out/sim-ids.txt" 2>"$out/sim.log" &
sim=$!
trap 'kill "$sim" 2>/dev/null || true' EXIT
for _ in $(seq 300); do
  [ -s "$out/sim.url" ] && break
  kill -0 "$sim" 2>/dev/null || { cat "$out/sim.log"; exit 1; }
  sleep 0.1
done
[ -s "$out/sim.url" ] || { echo "the simulator did not start"; cat "$out/sim.log"; exit 1; }

{
  echo "# demo call list: 300 calls, a duplicate, an unknown call and a hostile id"
  cat "$out/sim-ids.txt"
  head -n 1 "$out/sim-ids.txt"
  echo "c-thiscalldoesnotexist00"
  echo "c-../../v1/users/u-someoneelse/calls"
} >"$out/calls.txt"

export CATAPULT_BASE_URL="$(cat "$out/sim.url")"
export CATAPULT_USER_ID=u-simulatoruserid0000000
export CATAPULT_API_TOKEN=t-simulator-token
export CATAPULT_API_SECRET=simulator-secret-do-not-log

# Say a command exactly as it runs (quoted for a shell), then run it.
show() {
  printf '$'
  printf ' %q' "$@"
  printf '\n'
  "$@"
}

echo "--- what the run would do, first: nothing is fetched or written"
show harvester run --dry-run --input "$out/calls.txt" --output "$out/events.ndjson"
echo
code=0
show harvester run --input "$out/calls.txt" --output "$out/events.ndjson" \
  --summary "$out/summary.json" --concurrency 16 || code=$?

echo
echo "exit code: $code"
echo "--- $out/summary.json"
cat "$out/summary.json"
echo "--- first events of $out/events.ndjson"
head -n 3 "$out/events.ndjson"
echo "--- $out/events.failures.ndjson"
cat "$out/events.failures.ndjson"
# Check the promise: every registry call in the output, no line twice.
python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
lines = open(f"{out}/events.ndjson", "rb").read().splitlines()
registry = set(open(f"{out}/sim-ids.txt").read().split())
calls = {json.loads(line)["callId"] for line in lines}
assert calls == registry, "some calls are missing from the output"
assert len(set(lines)) == len(lines), "an event was written twice"
print(f"checked: {len(lines)} events of {len(calls)} calls, each exactly once")
PY
echo
echo "--- nightly mode: yesterday's calls, found through the API's call list, gzip output"
show harvester run --yesterday --output "$out/nightly/events-{date}.ndjson.gz" \
  --calls-output "$out/nightly/calls-{date}.ndjson.gz" --concurrency 16 --no-progress
echo "--- the nights missed before it, caught up in one pass; yesterday is not touched again"
show harvester run --nights 3 --output "$out/nightly/events-{date}.ndjson.gz" \
  --calls-output "$out/nightly/calls-{date}.ndjson.gz" --concurrency 16 --no-progress
ls -l "$out/nightly"
echo "--- where each night stands"
show harvester status --output "$out/nightly/events-{date}.ndjson.gz" --nights 3

# The demo's call list holds two calls that cannot be harvested, so exit code 1 is the
# expected, correct outcome; anything else is a real failure.
if [ "$code" -ne 1 ]; then
  echo "unexpected exit code $code (expected 1: two calls are meant to fail)"
  exit 1
fi
echo "demo OK: every harvestable call is in the output once; the two bad ones are in the failures file."
