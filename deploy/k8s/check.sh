#!/usr/bin/env bash
# Checks the Kubernetes recipe offline, without a cluster:
#   1. renders each overlay (overlays/cpu-local, overlays/gpu) with `kubectl kustomize`;
#   2. validates every rendered object against the Kubernetes 1.30 JSON schemas, strictly
#      (unknown fields are errors), with kubernetes-validate (PyPI; it ships the schemas);
#   3. asserts what the recipe relies on: the coordinator Deployment and Service, the workers'
#      Indexed Job (completions = parallelism = INCEPT_WORKERS; 20 and one nvidia.com/gpu per
#      worker in the gpu overlay), the join token mounted as a file in both and present in no
#      container's command, args or environment, the shared volume at /shared in both;
#   4. resolves each overlay's experiment.toml with `coordinator config` when a coordinator
#      binary is at hand (INCEPT_COORDINATOR_BIN, target/{release,debug}/, or PATH).
# Exit status: 0 all passed, 1 a check failed, 77 a tool is missing (prints SKIPPED: why).
#
#   deploy/k8s/check.sh              # from anywhere
#   K8S_VERSION=1.31.0 deploy/k8s/check.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
K8S_VERSION=${K8S_VERSION:-1.30.0}
OVERLAYS=(cpu-local gpu)

skip() {
  echo "SKIPPED: $*"
  exit 77
}

command -v kubectl >/dev/null 2>&1 || skip "kubectl not found (it renders the overlays: kubectl kustomize)"
kubectl kustomize --help >/dev/null 2>&1 || skip "this kubectl has no 'kustomize' subcommand"
command -v python3 >/dev/null 2>&1 || skip "python3 not found"
if command -v kubernetes-validate >/dev/null 2>&1; then
  VALIDATE=(kubernetes-validate)
elif python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  VALIDATE=(python3 -m kubernetes_validate)
else
  skip "kubernetes-validate not found (python3 -m pip install kubernetes-validate)"
fi
python3 -c 'import yaml' >/dev/null 2>&1 || skip "python3 has no PyYAML (python3 -m pip install pyyaml)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
FAILED=0

echo "== kubectl: $(kubectl version --client 2>/dev/null | head -n 2 | paste -sd ' ' -)"
echo "== kubernetes-validate: $("${VALIDATE[@]}" --version 2>&1), schemas of Kubernetes $K8S_VERSION, strict"

for overlay in "${OVERLAYS[@]}"; do
  out="$WORK/$overlay.yaml"
  if ! kubectl kustomize "$HERE/overlays/$overlay" >"$out" 2>"$WORK/$overlay.err"; then
    echo "FAIL: kubectl kustomize overlays/$overlay:"
    sed 's/^/  /' "$WORK/$overlay.err"
    FAILED=1
    continue
  fi
  objects=$(python3 -c 'import sys, yaml; print(sum(1 for d in yaml.safe_load_all(open(sys.argv[1])) if d))' "$out")
  echo "ok: rendered overlays/$overlay: $objects objects"
  # --quiet prints only warnings and failures. A WARN is a kind without a schema: a failure
  # here, since every object must be checked.
  set +e
  "${VALIDATE[@]}" -k "$K8S_VERSION" --strict --quiet "$out" >"$WORK/$overlay.validate" 2>&1
  rc=$?
  set -e
  if [ "$rc" -ne 0 ] || grep -qE '^(ERROR|WARN|FATAL)' "$WORK/$overlay.validate"; then
    echo "FAIL: overlays/$overlay does not validate against Kubernetes $K8S_VERSION (exit $rc):"
    sed "s|$WORK/||; s/^/  /" "$WORK/$overlay.validate"
    FAILED=1
  else
    echo "ok: overlays/$overlay: all $objects objects valid against the Kubernetes $K8S_VERSION schemas (strict)"
  fi
done

# The recipe's invariants, object by object.
if ! python3 - "$WORK" "${OVERLAYS[@]}" <<'PY'; then FAILED=1; fi
import base64
import sys

import yaml

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

work, overlays = sys.argv[1], sys.argv[2:]
failures = []


def check(ok, what):
    print(("ok: " if ok else "FAIL: ") + what)
    if not ok:
        failures.append(what)
    return ok


def pod_spec(obj):
    return obj["spec"]["template"]["spec"]


def containers(spec):
    return spec.get("containers", []) + spec.get("initContainers", [])


def mounted(spec, volume_name, path):
    """Every container of the pod mounts volume `volume_name` at `path`."""
    cs = spec.get("containers", [])
    return bool(cs) and all(
        any(m["name"] == volume_name and m["mountPath"] == path for m in c.get("volumeMounts", []))
        for c in cs
    )


def volume(spec, pred):
    return next((v for v in spec.get("volumes", []) if pred(v)), None)


for overlay in overlays:
    path = f"{work}/{overlay}.yaml"
    try:
        docs = [d for d in yaml.safe_load_all(open(path)) if d]
    except FileNotFoundError:
        check(False, f"[{overlay}] rendered manifests (the render failed)")
        continue
    print(f"-- overlays/{overlay}")

    def one(kind, prefix):
        found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(prefix)]
        check(len(found) == 1, f"[{overlay}] exactly one {kind} {prefix}* (found {len(found)})")
        return found[0] if found else None

    deploy = one("Deployment", "incept-coordinator")
    service = one("Service", "incept-coordinator")
    job = one("Job", "incept-workers")
    secret = one("Secret", "incept-token")
    run_cm = one("ConfigMap", "incept-run")
    exp_cm = one("ConfigMap", "incept-experiment")
    pvc = one("PersistentVolumeClaim", "incept-shared")
    if None in (deploy, service, job, secret, run_cm, exp_cm, pvc):
        continue
    dspec, jspec = pod_spec(deploy), pod_spec(job)
    coordinator, worker = dspec["containers"][0], jspec["containers"][0]

    # The world size, written once.
    workers_text = str(run_cm.get("data", {}).get("INCEPT_WORKERS", ""))
    check(workers_text.isdigit(), f"[{overlay}] incept-run INCEPT_WORKERS is a count ({workers_text!r})")
    check(bool(run_cm.get("data", {}).get("INCEPT_RUN_ID")), f"[{overlay}] incept-run sets INCEPT_RUN_ID")
    workers = int(workers_text) if workers_text.isdigit() else -1

    # Coordinator.
    check(deploy["spec"].get("replicas") == 1, f"[{overlay}] coordinator Deployment: 1 replica")
    check(deploy["spec"].get("strategy", {}).get("type") == "Recreate", f"[{overlay}] coordinator Deployment: strategy Recreate")
    argv = coordinator.get("command", []) + coordinator.get("args", [])
    for flag, value in [
        ("launch", "/etc/incept/experiment/experiment.toml"),
        ("--run-id", "$(INCEPT_RUN_ID)"),
        ("--state-dir", "/shared/runs"),
        ("--token-file", "/etc/incept/token/token"),
    ]:
        ok = flag in argv and argv.index(flag) + 1 < len(argv) and argv[argv.index(flag) + 1] == value
        check(ok, f"[{overlay}] coordinator runs with {flag} {value}")
    for setting in ("cluster.launcher=external", "cluster.bind=0.0.0.0:50051", "cluster.world_size=$(INCEPT_WORKERS)"):
        check(setting in argv, f"[{overlay}] coordinator runs with --set {setting}")
    env = {e["name"]: e for e in coordinator.get("env", [])}
    for key in ("INCEPT_RUN_ID", "INCEPT_WORKERS"):
        ref = env.get(key, {}).get("valueFrom", {}).get("configMapKeyRef", {})
        check(ref.get("name") == run_cm["metadata"]["name"] and ref.get("key") == key,
              f"[{overlay}] coordinator env {key} from ConfigMap {run_cm['metadata']['name']}")
    for probe in ("readinessProbe", "livenessProbe"):
        check(coordinator.get(probe, {}).get("grpc", {}).get("port") == 50051,
              f"[{overlay}] coordinator {probe}: native gRPC on 50051")
    ports = [p for p in coordinator.get("ports", []) if p.get("containerPort") == 50051 and p.get("name") == "grpc"]
    check(bool(ports), f"[{overlay}] coordinator container port 50051 named grpc")
    exp_vol = volume(dspec, lambda v: v.get("configMap", {}).get("name") == exp_cm["metadata"]["name"])
    check(exp_vol is not None and mounted(dspec, exp_vol["name"], "/etc/incept/experiment"),
          f"[{overlay}] experiment ConfigMap mounted at /etc/incept/experiment in the coordinator")

    # Service.
    sport = [p for p in service["spec"].get("ports", []) if p.get("port") == 50051]
    check(bool(sport) and sport[0].get("name") == "grpc", f"[{overlay}] Service incept-coordinator: port 50051 named grpc")
    labels = deploy["spec"]["template"]["metadata"].get("labels", {})
    selector = service["spec"].get("selector", {})
    check(bool(selector) and all(labels.get(k) == v for k, v in selector.items()),
          f"[{overlay}] Service selector {selector} selects the coordinator pods")

    # Workers.
    spec = job["spec"]
    check(spec.get("completionMode") == "Indexed", f"[{overlay}] worker Job: completionMode Indexed")
    check(spec.get("completions") == workers and spec.get("parallelism") == workers,
          f"[{overlay}] worker Job: completions = parallelism = INCEPT_WORKERS = {workers} "
          f"(got {spec.get('completions')}/{spec.get('parallelism')})")
    check(jspec.get("restartPolicy") == "Never", f"[{overlay}] worker pods: restartPolicy Never (a failed worker is re-run as a new pod)")
    check(isinstance(spec.get("backoffLimitPerIndex"), int) and spec["backoffLimitPerIndex"] >= 1,
          f"[{overlay}] worker Job: backoffLimitPerIndex {spec.get('backoffLimitPerIndex')} (retries per rank)")
    wargv = worker.get("command", []) + worker.get("args", [])
    check(wargv[:2] == ["coordinator", "worker"], f"[{overlay}] worker container runs 'coordinator worker'")
    for flag, value in [("--coordinator", "http://incept-coordinator:50051"), ("--token-file", "/etc/incept/token/token")]:
        ok = flag in wargv and wargv.index(flag) + 1 < len(wargv) and wargv[wargv.index(flag) + 1] == value
        check(ok, f"[{overlay}] worker runs with {flag} {value}")

    # The join token: a mounted file, never an argument or a variable.
    sname = secret["metadata"]["name"]
    raw = secret.get("data", {}).get("token")
    check(raw is not None, f"[{overlay}] Secret {sname} has key 'token'")
    token = base64.b64decode(raw).decode().strip() if raw else None
    check(bool(token) and len(token) >= 16, f"[{overlay}] the token is at least 16 characters")
    for kind, podspec in (("Deployment", dspec), ("Job", jspec)):
        vol = volume(podspec, lambda v: v.get("secret", {}).get("secretName") == sname)
        check(vol is not None, f"[{overlay}] {kind}: Secret {sname} is a volume")
        if vol is not None:
            check(mounted(podspec, vol["name"], "/etc/incept/token"), f"[{overlay}] {kind}: the token volume is mounted at /etc/incept/token")
            check(vol["secret"].get("defaultMode") == 0o400, f"[{overlay}] {kind}: the token volume has defaultMode 0400")
    for d in docs:
        if d["kind"] not in ("Deployment", "Job", "StatefulSet", "DaemonSet", "Pod", "CronJob"):
            continue
        spec_ = d["spec"]
        if d["kind"] == "CronJob":
            spec_ = spec_["jobTemplate"]["spec"]
        podspec = spec_ if d["kind"] == "Pod" else spec_["template"]["spec"]
        for c in containers(podspec):
            where = f"{d['kind']} {d['metadata']['name']} container {c['name']}"
            texts = list(c.get("command", [])) + list(c.get("args", []))
            texts += [str(e.get("value", "")) for e in c.get("env", [])]
            check(not token or not any(token in t for t in texts),
                  f"[{overlay}] {where}: the token value is in no command, args or env value")
            refs = [e["name"] for e in c.get("env", []) if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == sname]
            refs += ["envFrom"] * sum(1 for e in c.get("envFrom", []) if e.get("secretRef", {}).get("name") == sname)
            check(not refs, f"[{overlay}] {where}: no environment variable comes from the token Secret {refs or ''}")
    if token and token.startswith("REPLACE-ME"):
        print(f"note: [{overlay}] the token is still the placeholder: replace overlays/{overlay}/token before applying")

    # Shared volume and pod security.
    for kind, podspec in (("Deployment", dspec), ("Job", jspec)):
        vol = volume(podspec, lambda v: v.get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"])
        check(vol is not None and mounted(podspec, vol["name"], "/shared"), f"[{overlay}] {kind}: PVC incept-shared mounted at /shared")
        check(podspec.get("securityContext", {}).get("runAsNonRoot") is True, f"[{overlay}] {kind}: runAsNonRoot")
        check(all(c.get("securityContext", {}).get("allowPrivilegeEscalation") is False for c in containers(podspec)),
              f"[{overlay}] {kind}: allowPrivilegeEscalation false in every container")

    # The experiment file.
    text = exp_cm.get("data", {}).get("experiment.toml", "")
    check(bool(text), f"[{overlay}] ConfigMap incept-experiment has experiment.toml")
    exp = {}
    if tomllib and text:
        try:
            exp = tomllib.loads(text)
            check(True, f"[{overlay}] experiment.toml parses as TOML")
        except tomllib.TOMLDecodeError as e:
            check(False, f"[{overlay}] experiment.toml parses as TOML: {e}")
    cluster = exp.get("cluster", {})
    if "world_size" in cluster:
        check(cluster["world_size"] == workers, f"[{overlay}] experiment.toml cluster.world_size = INCEPT_WORKERS ({cluster['world_size']})")

    # GPUs.
    def gpus(c, where):
        return c.get("resources", {}).get(where, {}).get("nvidia.com/gpu")

    if overlay == "gpu":
        check(workers == 20, f"[{overlay}] 20 workers (the paper's 20 GPU replicas)")
        check(spec.get("completions") == 20 and spec.get("parallelism") == 20, f"[{overlay}] worker Job: completions 20, parallelism 20")
        check(str(gpus(worker, "limits")) == "1", f"[{overlay}] worker container limits nvidia.com/gpu: 1 (got {gpus(worker, 'limits')!r})")
        check(gpus(coordinator, "limits") is None, f"[{overlay}] the coordinator asks for no GPU")
        check(cluster.get("device") == "cuda" and cluster.get("backend") == "nccl", f"[{overlay}] experiment: cluster.device cuda, cluster.backend nccl")
        check(exp.get("model", {}).get("arch") == "inception_resnet_v2", f"[{overlay}] experiment: model.arch inception_resnet_v2")
        check(str(exp.get("data", {}).get("path", "")).startswith("/shared/data/"), f"[{overlay}] experiment: data.path under /shared/data ({exp.get('data', {}).get('path')})")
    else:
        check(all(gpus(c, w) is None for c in containers(dspec) + containers(jspec) for w in ("limits", "requests")),
              f"[{overlay}] no container asks for a GPU")
        check(exp.get("data", {}).get("source") == "synthetic", f"[{overlay}] experiment: data.source synthetic")
        check(cluster.get("device", "cpu") == "cpu", f"[{overlay}] experiment: cluster.device cpu")

if failures:
    print(f"{len(failures)} check(s) failed")
    sys.exit(1)
PY

# The experiment files as the coordinator resolves them (every key known, every value valid).
BIN=${INCEPT_COORDINATOR_BIN:-}
if [ -z "$BIN" ]; then
  for candidate in "$ROOT/target/release/coordinator" "$ROOT/target/debug/coordinator" "$(command -v coordinator 2>/dev/null || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then BIN=$candidate; break; fi
  done
fi
if [ -n "$BIN" ]; then
  for overlay in "${OVERLAYS[@]}"; do
    workers=$(sed -n 's/^ *- INCEPT_WORKERS=\([0-9]*\).*/\1/p' "$HERE/overlays/$overlay/kustomization.yaml")
    # INCEPT__* variables of this shell would change what the file resolves to: drop them.
    # shellcheck disable=SC2046 # one word per -u NAME
    if env $(compgen -e | grep '^INCEPT__' | sed 's/^/-u /') "$BIN" config "$HERE/overlays/$overlay/experiment.toml" \
      --set cluster.launcher=external --set cluster.bind=0.0.0.0:50051 \
      --set "cluster.world_size=${workers:-1}" >"$WORK/$overlay.resolved" 2>&1; then
      echo "ok: overlays/$overlay/experiment.toml resolves with $BIN config"
    else
      echo "FAIL: overlays/$overlay/experiment.toml does not resolve ($BIN config):"
      sed 's/^/  /' "$WORK/$overlay.resolved"
      FAILED=1
    fi
  done
else
  echo "skipped: coordinator config of the experiment files (no coordinator binary: set INCEPT_COORDINATOR_BIN or build one)"
fi

if [ "$FAILED" -ne 0 ]; then
  echo "deploy/k8s/check.sh: FAILED"
  exit 1
fi
echo "deploy/k8s/check.sh: all checks passed"
