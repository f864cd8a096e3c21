#!/usr/bin/env bash
# Runs the real daemon with the ConfigMap's config in the file layout the pod gives it,
# without a cluster, and checks that the layout works as statefulset.yaml claims:
#   - the daemon runs as uid 10001 with group 10001 (fsGroup), its secrets 0400 owned by it
#     (as the prepare container leaves them), its state dir `state/` 0700 (setgid, as mkdir
#     makes it) inside the claim's 2770 root (as fsGroup leaves it);
#   - the database (uid 10002, supplementary group 10001) reaches the 0660 socket in the
#     shared setgid folder; health "" and kmsbroker.v1.KeyBroker answer SERVING (no store
#     has a key yet); its GetStoreKey passes the policy and reaches the KMS (Vault is not
#     running here: UNAVAILABLE, not PERMISSION_DENIED);
#   - a process without group 10001 cannot connect; one with it but another uid is denied.
# Needs root (setpriv changes uid), grpcurl on PATH and the built binary. Called by
# deploy/check.sh; usage: simulate_pod.sh KMS_BROKER_BINARY PYTHON_WITH_PYYAML
set -euo pipefail
bin="$1"
python="$2"
cd "$(dirname "$0")"
here=$PWD
t="$(mktemp -d)"
daemon=
cleanup() {
  if [ -n "$daemon" ]; then kill "$daemon" 2>/dev/null || true; fi
  rm -rf "$t"
}
trap cleanup EXIT
chmod 755 "$t"

# The volumes, as the kubelet and the prepare container leave them.
mkdir "$t/run" "$t/secrets" "$t/vol"
chgrp 10001 "$t/run" "$t/vol"
chmod 2777 "$t/run"    # emptyDir with fsGroup
chmod 2770 "$t/vol"    # the claim's root with fsGroup
"$bin" dev-certs --out "$t/certs" >/dev/null
for pair in ca.pem:ca.crt ca.pem:vault-ca.crt server.pem:tls.crt server-key.pem:tls.key; do
  install -o 10001 -g 10001 -m 0400 "$t/certs/${pair%%:*}" "$t/secrets/${pair##*:}"
done
printf 's.placeholder\n' >"$t/secrets/vault-token"
chown 10001:10001 "$t/secrets/vault-token" && chmod 0400 "$t/secrets/vault-token"
setpriv --reuid 10001 --regid 10001 --groups 10001 mkdir -m 0700 "$t/vol/state"

"$python" -c '
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("kind") == "ConfigMap":
        sys.stdout.write(doc["data"]["kms-broker.toml"])
' "$here/configmap.yaml" |
  sed -e "s#/run/secrets/kms-broker#$t/secrets#g; s#/var/lib/kms-broker#$t/vol#g" \
    -e "s#/run/kms-broker#$t/run#g; s#0\.0\.0\.0:[0-9]*#127.0.0.1:0#g" >"$t/kms-broker.toml"
chmod 0644 "$t/kms-broker.toml"

setpriv --reuid 10001 --regid 10001 --groups 10001 \
  "$bin" serve --config "$t/kms-broker.toml" >"$t/daemon.log" 2>&1 &
daemon=$!
sock="$t/run/broker.sock"
# Hang guard only: wait up to 30 s for the socket.
for _ in $(seq 300); do
  [ -S "$sock" ] && break
  kill -0 "$daemon" 2>/dev/null || { cat "$t/daemon.log" >&2; echo "simulate_pod: FAIL: the daemon exited" >&2; exit 1; }
  sleep 0.1
done
[ -S "$sock" ] || { cat "$t/daemon.log" >&2; echo "simulate_pod: FAIL: no socket" >&2; exit 1; }

fail() { echo "simulate_pod: FAIL: $1" >&2; cat "$t/daemon.log" >&2; exit 1; }
g() { # as UID, with GROUPS (comma list or "none"), then grpcurl arguments
  local uid=$1 groups=$2
  shift 2
  local gs=(--groups "$groups")
  [ "$groups" = none ] && gs=(--clear-groups)
  setpriv --reuid "$uid" --regid "$uid" "${gs[@]}" \
    grpcurl -plaintext -unix -authority localhost "$@" 2>&1 || true
}
[ "$(stat -c '%a %g' "$sock")" = "660 10001" ] || fail "socket mode/group: $(stat -c '%a %g' "$sock")"
g 10002 10001 "$sock" grpc.health.v1.Health/Check | grep -q '"SERVING"' ||
  fail "liveness (health \"\") is not SERVING for the database's uid"
g 10002 10001 -d '{"service":"kmsbroker.v1.KeyBroker"}' "$sock" grpc.health.v1.Health/Check |
  grep -q '"SERVING"' || fail "readiness (kmsbroker.v1.KeyBroker) is not SERVING"
out="$(g 10002 10001 -d '{"store_id":"store-1","create":true}' "$sock" kmsbroker.v1.KeyBroker/GetStoreKey)"
grep -q 'Code: Unavailable' <<<"$out" || fail "the database's GetStoreKey: $out"
out="$(g 10003 none "$sock" grpc.health.v1.Health/Check)"
grep -q 'permission denied' <<<"$out" || fail "a process outside group 10001 reached the socket: $out"
out="$(g 10004 10001 -d '{"store_id":"store-1"}' "$sock" kmsbroker.v1.KeyBroker/GetStoreKey)"
grep -q 'Code: PermissionDenied' <<<"$out" || fail "another uid in the group was not denied: $out"
echo "simulate_pod: the pod's layout works (uid 10001 daemon, uid 10002 database through fsGroup 10001)"
