"""Checks what the Kubernetes schemas cannot: the properties statefulset.yaml exists to show.

Run by deploy/check.sh (with PyYAML from its venv). Exits 1 naming each property that does
not hold, so an edit that quietly weakens the example fails the check.
"""

import sys

import yaml

SOCKET = "unix:///run/kms-broker/broker.sock"


def main(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    failures = []

    def need(ok, what):
        if not ok:
            failures.append(what)

    sc = pod.get("securityContext", {})
    need(sc.get("runAsNonRoot") is True, "pod securityContext.runAsNonRoot: true")
    need(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccomp RuntimeDefault")
    need(sc.get("fsGroupChangePolicy") == "OnRootMismatch",
         "fsGroupChangePolicy: OnRootMismatch (Always would make the state dir group-writable)")

    containers = pod.get("initContainers", []) + pod["containers"]
    for c in containers:
        csc = c.get("securityContext", {})
        name = c["name"]
        need(csc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem")
        need(csc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation false")
        need(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities drop ALL")
        need("limits" in c.get("resources", {}), f"{name}: resource limits")

    broker = next(c for c in pod["initContainers"] if c["name"] == "kms-broker")
    need(broker.get("restartPolicy") == "Always", "kms-broker is a native sidecar")
    probe = lambda kind: broker.get(kind, {}).get("exec", {}).get("command", [])
    for kind in ("startupProbe", "livenessProbe"):
        cmd = probe(kind)
        need(f"-addr={SOCKET}" in cmd and not any(a.startswith("-service") for a in cmd),
             f"{kind}: health service \"\" over the socket (never depends on the KMS)")
    cmd = probe("readinessProbe")
    need(f"-addr={SOCKET}" in cmd and "-service=kmsbroker.v1.KeyBroker" in cmd,
         "readinessProbe: kmsbroker.v1.KeyBroker over the socket")

    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    need("kms-broker-state" in claims and "kms-broker-state" not in volumes,
         "the state dir is a PersistentVolumeClaim, never an emptyDir")
    for name, v in volumes.items():
        if "secret" in v:
            need(v["secret"].get("defaultMode") == 0o400, f"secret volume {name}: defaultMode 0400")
    need(volumes.get("secrets", {}).get("emptyDir", {}).get("medium") == "Memory",
         "the copied secrets live in a memory-backed emptyDir")
    need("emptyDir" in volumes.get("socket", {}), "the socket is an emptyDir shared by both")
    db = next(c for c in pod["containers"] if c["name"] == "database")
    need(any(m["name"] == "socket" for m in db.get("volumeMounts", [])),
         "the database mounts the socket")
    need(not any(m["name"] in ("secrets", "secrets-in", "kms-broker-state")
                 for m in db.get("volumeMounts", [])),
         "the database mounts neither the secrets nor the state dir")

    for f in failures:
        print(f"{path}: FAIL: {f}", file=sys.stderr)
    if failures:
        sys.exit(1)
    print(f"{path}: {len(containers)} containers, every deployment property holds")


if __name__ == "__main__":
    main(sys.argv[1])
