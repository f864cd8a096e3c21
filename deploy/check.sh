#!/usr/bin/env bash
# Checks what can be checked of deploy/ without a cluster or a booted systemd:
#   1. the systemd unit: `systemd-analyze security --offline=yes` must rate it 2.0 or lower,
#      and `systemd-analyze verify` must pass (on a copy whose ExecStart points at the
#      binary built here: /usr/local/bin/kms-broker does not exist on a build machine);
#   2. the sysusers snippet parses (`systemd-sysusers --dry-run` against an empty root);
#   3. both sample configs (the unit's and the ConfigMap's) pass `kms-broker check-config`,
#      with their absolute paths moved into a temporary folder (dev certificates and a
#      0600 token file stand in for the Secret's files);
#   5. (as root only: it changes uids) the pod's file layout, with the real daemon:
#      deploy/kubernetes/simulate_pod.sh;
#   4. the Kubernetes manifests validate, strictly (unknown fields are errors), against the
#      Kubernetes JSON schemas shipped in PyPI's kubernetes-validate (pinned below), which is
#      installed on first use into the git-ignored .standins/k8s-venv.
# With CI set, a missing tool fails the check instead of skipping it.
#
# Usage: deploy/check.sh   (KMS_BROKER=path/to/kms-broker, default target/debug/kms-broker)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin="${KMS_BROKER:-$root/target/debug/kms-broker}"
unit=deploy/systemd/kms-broker.service
k8s_validate_version=1.37.0
k8s_version=1.33.0

missing() {
  if [ -n "${CI:-}" ]; then
    echo "deploy/check.sh: FAIL: $1 is missing (CI is set)" >&2
    exit 1
  fi
  echo "deploy/check.sh: SKIP: $1 is missing"
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# 1. The unit.
if command -v systemd-analyze >/dev/null; then
  # --threshold is in tenths of the score: 20 = 2.0. Non-zero exit above it.
  score="$(systemd-analyze security --offline=yes "$unit" 2>&1 | tail -n 1)"
  echo "systemd-analyze security --offline=yes $unit: $score"
  systemd-analyze security --offline=yes --threshold=20 "$unit" >/dev/null 2>&1 || {
    echo "deploy/check.sh: FAIL: the unit rates above 2.0" >&2
    exit 1
  }
  exe="$bin"
  [ -x "$exe" ] || exe="$(command -v true)"
  sed "s#/usr/local/bin/kms-broker#$exe#g" "$unit" >"$tmp/kms-broker.service"
  systemd-analyze verify "$tmp/kms-broker.service"
  echo "systemd-analyze verify $unit: ok (ExecStart pointed at $exe)"
else
  missing systemd-analyze
fi

# 2. sysusers.
if command -v systemd-sysusers >/dev/null; then
  mkdir -p "$tmp/sysroot/etc"
  out="$(systemd-sysusers --root="$tmp/sysroot" --dry-run "$root/deploy/systemd/kms-broker.sysusers" 2>&1)" || {
    echo "$out" >&2
    echo "deploy/check.sh: FAIL: systemd-sysusers rejects deploy/systemd/kms-broker.sysusers" >&2
    exit 1
  }
  echo "systemd-sysusers --dry-run deploy/systemd/kms-broker.sysusers: ok"
else
  missing systemd-sysusers
fi

# 4 first: its venv's Python (with PyYAML) also reads the ConfigMap for 3.
venv="$root/.standins/k8s-venv"
if [ ! -x "$venv/bin/kubernetes-validate" ] ||
  ! "$venv/bin/pip" show kubernetes-validate 2>/dev/null | grep -qx "Version: $k8s_validate_version"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$k8s_validate_version"
fi
for f in deploy/kubernetes/*.yaml; do
  "$venv/bin/kubernetes-validate" --strict -k "$k8s_version" "$f"
done
# What a schema cannot say: the properties this example exists to show.
"$venv/bin/python" deploy/kubernetes/check_properties.py deploy/kubernetes/statefulset.yaml

# 3. The sample configs, through the daemon's own loader.
if [ ! -x "$bin" ]; then
  missing "$bin (cargo build -p kms-broker)"
  exit 0
fi
check_config() { # name, toml text on stdin; paths already moved into $tmp
  cat >"$tmp/$1.toml"
  "$bin" check-config "$tmp/$1.toml" >/dev/null || {
    echo "deploy/check.sh: FAIL: kms-broker check-config rejects the $1 sample" >&2
    exit 1
  }
  echo "kms-broker check-config ($1 sample): ok"
}
(umask 077 && mkdir -p "$tmp/state/state" "$tmp/log" "$tmp/run" "$tmp/secrets")
sed -e "s#/var/lib/kms-broker#$tmp/state#g; s#/run/kms-broker#$tmp/run#g; s#/var/log/kms-broker#$tmp/log#g" \
  deploy/systemd/kms-broker.toml | check_config systemd

# The ConfigMap's files, as the prepare container leaves them: 0400, owned by the daemon.
"$bin" dev-certs --out "$tmp/certs" >/dev/null
install -m 0400 "$tmp/certs/ca.pem" "$tmp/secrets/ca.crt"
install -m 0400 "$tmp/certs/ca.pem" "$tmp/secrets/vault-ca.crt"
install -m 0400 "$tmp/certs/server.pem" "$tmp/secrets/tls.crt"
install -m 0400 "$tmp/certs/server-key.pem" "$tmp/secrets/tls.key"
(umask 077 && echo "s.placeholder-token" >"$tmp/secrets/vault-token")
"$venv/bin/python" -c '
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("kind") == "ConfigMap":
        sys.stdout.write(doc["data"]["kms-broker.toml"])
' deploy/kubernetes/configmap.yaml |
  sed -e "s#/run/secrets/kms-broker#$tmp/secrets#g; s#/var/lib/kms-broker#$tmp/state#g; s#/run/kms-broker#$tmp/run#g" |
  check_config kubernetes

# 5. The pod's layout with the real daemon. It runs processes as other uids, so only as
# root (skipped otherwise, also under CI: a CI runner is rarely root); needs grpcurl.
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null && command -v grpcurl >/dev/null; then
  deploy/kubernetes/simulate_pod.sh "$bin" "$venv/bin/python"
else
  echo "deploy/check.sh: SKIP: deploy/kubernetes/simulate_pod.sh (needs root, setpriv and grpcurl)"
fi
