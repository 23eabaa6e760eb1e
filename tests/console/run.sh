#!/usr/bin/env bash
# End-to-end tests of the web console: installs what they need (Debian's chromium, a CJK font,
# the pinned playwright-core), builds `tuna`, starts `tuna serve` on a free port with a fresh data
# directory and two users, runs `node --test`, and stops the server. Screenshots land in
# test-output/console/ (gitignored), the server's log beside them.
#
#   bash tests/console/run.sh            # from anywhere in the repository
#   SKIP_BUILD=1 bash tests/console/run.sh   # reuse target/release/tuna
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${TUNA_TEST_OUT:-$repo/test-output/console}"
mkdir -p "$out"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# --- a browser: Debian's chromium (playwright's own browser downloads are not used) ----------
chromium_bin="${CHROMIUM:-}"
if [ -z "$chromium_bin" ]; then
  chromium_bin="$(command -v chromium || true)"
fi
if [ -z "$chromium_bin" ]; then
  echo "console tests: installing chromium (apt-get)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null
  chromium_bin="$(command -v chromium)"
fi
export CHROMIUM="$chromium_bin"

# --- fonts: the Chinese interface's screenshots need a CJK font ------------------------------
if ! fc-list 2>/dev/null | grep -i "Noto Sans CJK" >/dev/null; then  # not -q: an early exit would fail fc-list (SIGPIPE) under pipefail
  echo "console tests: installing fonts-noto-cjk (apt-get)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq fonts-noto-cjk fontconfig >/dev/null
fi

# --- node and the test driver ---------------------------------------------------------------
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "console tests: installing nodejs and npm (apt-get)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nodejs npm >/dev/null
fi
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)

# --- the server -----------------------------------------------------------------------------
if [ -z "${SKIP_BUILD:-}" ]; then
  (cd "$repo" && cargo build --release -p tuna-cli)
fi
tuna="$repo/target/release/tuna"

data="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$data"
}
trap cleanup EXIT

# `tuna users create` prints the new key once; take the sk-tuna-… token from its output.
new_key() {
  "$tuna" users create "$1" --data-dir "$data" | grep -o 'sk-tuna-[A-Za-z0-9]*' | head -n1
}
key1="$(new_key console-e2e)"
key2="$(new_key console-other)"
if [ -z "$key1" ] || [ -z "$key2" ]; then
  echo "console tests: could not read an API key from \`tuna users create\`" >&2
  exit 1
fi

port="$(node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
url="http://127.0.0.1:$port"
# --software-gpus: the machine's software Vulkan device (lavapipe, installed by scripts/test.sh)
# is offered as gpu:0, so the wizard's compute step lists a GPU (compute.test.mjs).
"$tuna" serve --data-dir "$data" --listen "127.0.0.1:$port" --software-gpus >"$out/server.log" 2>&1 &
server_pid=$!

# Ready when the API answers an authenticated request (the demo model may be written first).
for _ in $(seq 1 240); do
  if curl -fsS -H "Authorization: Bearer $key1" "$url/v1/models" >/dev/null 2>&1; then
    break
  fi
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "console tests: the server exited; its log:" >&2
    cat "$out/server.log" >&2
    exit 1
  fi
  sleep 0.5
done

status=0
TUNA_URL="$url" TUNA_API_KEY="$key1" TUNA_API_KEY_2="$key2" TUNA_TEST_OUT="$out" \
  node --test --test-concurrency=1 ${CONSOLE_TESTS:-"$here/console.test.mjs" "$here/defects.test.mjs" "$here/team.test.mjs" "$here/dpo.test.mjs" "$here/compute.test.mjs" "$here/demo.test.mjs"} || status=$?
if [ "$status" != 0 ]; then
  echo "console tests failed; the server's log is $out/server.log, screenshots are in $out" >&2
fi
exit "$status"
