#!/usr/bin/env bash
# Load test: builds the daemon (release), starts `serve --dev` in a temporary folder, and
# drives WrapKey+UnwrapKey over mutual TLS with k6 (installed into .standins/ like the other
# stand-ins). VUS and DURATION tune the load; extra arguments go to `k6 run`.
#   server/benches/k6/run.sh                 # 16 VUs for 20 s
#   VUS=64 DURATION=60s server/benches/k6/run.sh
# The daemon is built without the cloud SDKs (FEATURES= to change that): the dev file key
# path runs none of their code, and a cold build takes minutes less.
set -euo pipefail
cd "$(dirname "$0")/../../.."
tests/standins/install.sh >/dev/null
export PATH="$PWD/.standins/bin:$PATH"

features=${FEATURES---no-default-features}
# shellcheck disable=SC2086 # FEATURES is a list of cargo flags
cargo build --release --locked -p kms-broker $features
tmp=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
KMS_BROKER_LOG=${KMS_BROKER_LOG:-info} target/release/kms-broker serve --dev --dev-dir "$tmp" \
  >"$tmp/daemon.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  grep -q "is serving" "$tmp/daemon.log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$tmp/daemon.log"; exit 1; }
  sleep 0.1
done
grep -q "is serving" "$tmp/daemon.log" || { echo "daemon did not start"; cat "$tmp/daemon.log"; exit 1; }

k6 run --quiet \
  -e ADDR=127.0.0.1:7443 -e CERTS="$tmp/certs" -e PROTO_DIR="$PWD/proto" \
  -e VUS="${VUS:-16}" -e DURATION="${DURATION:-20s}" \
  "$@" server/benches/k6/wrap_unwrap.js
