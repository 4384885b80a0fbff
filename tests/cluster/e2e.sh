#!/usr/bin/env bash
# The user story on real pods, on the local single-node cluster (cluster-up.sh starts it when it is not running):
#   1. a pod of ours runs as non-root under restricted Pod Security and resolves a Service through CoreDNS;
#   2. helm install (namespace `models` enforcing restricted Pod Security) --wait; helm test (the pants hook pod
#      runs for real); a request through the gateway's NodePort (kube-proxy) returns pants;
#      NetworkPolicies enforced (kube-network-policies): pods without the gateway's labels, in the namespace and in
#      another, cannot connect to TF Serving's ports; the gateway reaches its gRPC port (and not its REST port);
#   3. helm upgrade changing a value rolls both Deployments while a bounded request loop sees zero errors;
#   4. 2 TF Serving and 2 gateway replicas in `client` mode, the model on a PersistentVolume: the requests split over
#      the two TF Serving pods; then faults (faults.sh), each under a request loop: TF Serving pods deleted and
#      SIGKILLed, a gateway pod deleted and evictions against its PodDisruptionBudget, a new model version
#      hot-swapped, TF Serving scaled to 0 and back (only 503 model_unavailable meanwhile), a broken release failing
#      while the old pods serve, rolled back;
#   5. many models: two models, one with versions 1 and 2 labelled stable and canary (canary weight 20, shadow
#      100 %): helm test per model and label, the canary's share over 500 requests, the shadow's agreement from
#      /metrics, then stable moved to 2 and version 1 removed by helm upgrades, each with zero failed requests and
#      the TF Serving pod neither replaced nor restarted;
#   6. helm uninstall leaves nothing of the release.
# On failure: pod descriptions, logs and events of the namespace. The cluster is left running (cluster-down.sh).
#   E2E_KEEP=1  keep the release installed at the end
source "$(dirname "$0")/../../tools/cluster/cluster-env.sh"
NS=models
RELEASE=clothing
CHART="$ROOT/charts/clothing-model"
VALUES="$ROOT/values/local.yaml"
URL="http://$NODE_IP:30696/predict"
PANTS="$ROOT/tests/data/pants.jpg"
export HELM_CACHE_HOME="$ROOT/.tools/helm/cache" HELM_CONFIG_HOME="$ROOT/.tools/helm/config" \
  HELM_DATA_HOME="$ROOT/.tools/helm/data"
begin=$SECONDS
stage() { log "[$((SECONDS - begin)) s] $*"; }

dump() {
  echo "=== e2e failed: state of namespace $NS ===" >&2
  kubectl -n "$NS" get all,cm,pdb -o wide >&2 || true
  kubectl -n "$NS" describe pods >&2 || true
  for pod in $(kubectl -n "$NS" get pods -o name 2>/dev/null); do
    echo "--- logs of $pod" >&2
    kubectl -n "$NS" logs "$pod" --all-containers --tail=80 >&2 || true
    kubectl -n "$NS" logs "$pod" --all-containers --tail=40 --previous >&2 2>/dev/null || true
  done
  kubectl -n "$NS" get events --sort-by=.lastTimestamp >&2 || true
  echo "--- kubelet log (tail)" >&2; tail -30 "$NODE/logs/kubelet.log" >&2 || true
}
trap 'status=$?; [ $status -eq 0 ] || dump; exit $status' EXIT

during() { # NAME COMMAND...: runs the command while a request loop (flags: $DURING_FLAGS) sees no failed request
  local name=$1 stop loop; shift
  stop="$(mktemp -u)"
  # shellcheck disable=SC2086  # DURING_FLAGS is a list of flags
  python3 "$ROOT/tests/cluster/request_loop.py" --url "$URL" --image "$PANTS" --expect pants --workers 2 \
    --until-file "$stop" --max-seconds 600 ${DURING_FLAGS:-} >"$NODE/$name-loop.json" &
  loop=$!
  sleep 3
  "$@"
  sleep 5
  touch "$stop"
  wait $loop || die "requests failed during $name: $(cat "$NODE/$name-loop.json")"
  rm -f "$stop"
  echo "request loop during $name: $(cat "$NODE/$name-loop.json")"
}

# probe_pod NAMESPACE NAME CODE [ARG...]: `python3 -c CODE ARG...` in a pod of the base image, as restricted Pod
# Security allows and without the chart's labels; waits for it to succeed, prints its output and deletes it.
probe_pod() {
  local ns=$1 name=$2 command
  shift 2
  command="$(python3 -c 'import json, sys; print(json.dumps(["python3", "-c", *sys.argv[1:]]))' "$@")"
  kubectl -n "$ns" delete pod "$name" --ignore-not-found --wait >/dev/null
  kubectl -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $name, labels: {app.kubernetes.io/name: $name}}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext: {runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: probe
      image: localhost/clothing-model-base:dev
      imagePullPolicy: Never
      command: $command
      securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
      resources: {limits: {memory: 64Mi}, requests: {cpu: 10m, memory: 32Mi}}
EOF
  wait_for 60 "pod $name in $ns to complete" bash -c \
    "[ \"\$(kubectl -n $ns get pod $name -o jsonpath='{.status.phase}')\" = Succeeded ]"
  kubectl -n "$ns" logs "$name"
  kubectl -n "$ns" delete pod "$name" --wait=false >/dev/null
}

node_healthy || bash "$ROOT/tools/cluster/cluster-up.sh"
stage "cluster ready"

kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$NS" --overwrite pod-security.kubernetes.io/enforce=restricted \
  pod-security.kubernetes.io/warn=restricted pod-security.kubernetes.io/audit=restricted >/dev/null

# --- 1. a plain pod: non-root under restricted Pod Security, DNS, a Service through kube-proxy --------------------
DNS_PROBE='
import os, socket
print("uid", os.getuid(), "gid", os.getgid())
print("kubernetes.default ->", socket.gethostbyname("kubernetes.default.svc.cluster.local"))
print("kube-dns search path ok:", socket.gethostbyname("kubernetes.default") == socket.gethostbyname("kubernetes.default.svc.cluster.local"))
'
probe="$(probe_pod "$NS" e2e-probe "$DNS_PROBE")"
echo "$probe"
grep -q '^uid 10001 gid 10001$' <<<"$probe" || die "the probe pod did not run as 10001:10001"
grep -q '^kubernetes.default -> 10.96.0.1$' <<<"$probe" || die "CoreDNS did not resolve kubernetes.default"
stage "rung 1-2: a non-root pod ran; CoreDNS resolved a Service"

# --- 2. install, helm test, a request through the NodePort --------------------------------------------------------
helm uninstall "$RELEASE" -n "$NS" --wait >/dev/null 2>&1 || true
start=$SECONDS
helm install "$RELEASE" "$CHART" -f "$VALUES" -n "$NS" --create-namespace --wait --timeout 5m
stage "helm install --wait took $((SECONDS - start)) s"
kubectl -n "$NS" get pods -o wide
start=$SECONDS
# No --logs: the chart deletes succeeded hook pods (hook-succeeded), so helm cannot fetch their logs afterwards.
helm test "$RELEASE" -n "$NS" --timeout 5m
stage "helm test passed in $((SECONDS - start)) s"
answer="$(curl -sS --max-time 30 -H 'Content-Type: image/jpeg' --data-binary "@$PANTS" "$URL")"
echo "POST $URL -> $answer"
top="$(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); print(max(s, key=s.get))' "$answer")"
[ "$top" = pants ] || die "the gateway's NodePort answered $top, expected pants"
stage "rung 3: curl through the NodePort returned pants"

# --- 3b. NetworkPolicies enforced (kube-router): only the gateway reaches TF Serving, on gRPC only ----
# A connect probe: "TARGET open" or "TARGET blocked (...)" per host:port argument, 3 s each, all at once.
CONNECT_PROBE='
import socket, sys
from concurrent.futures import ThreadPoolExecutor
def probe(target):
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        return "open"
    except OSError as error:
        return f"blocked ({type(error).__name__})"
with ThreadPoolExecutor(8) as pool:
    for target, result in zip(sys.argv[1:], pool.map(probe, sys.argv[1:])):
        print(target, result)
'
TFS_HOST="$RELEASE-clothing-model-tf-serving.$NS.svc.cluster.local"
GATEWAY_HOST="$RELEASE-clothing-model-gateway.$NS.svc.cluster.local"
expect_probe() { # OUTPUT TARGET open|blocked
  grep -q "^$2 $3" <<<"$1" || die "expected $2 $3, the probe printed: $1"
}
kubectl create namespace e2e-other --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace e2e-other --overwrite pod-security.kubernetes.io/enforce=restricted >/dev/null
for ns in "$NS" e2e-other; do
  probed="$(probe_pod "$ns" np-probe "$CONNECT_PROBE" "$TFS_HOST:8500" "$TFS_HOST:8501" "$GATEWAY_HOST:80")"
  echo "from a pod in $ns without the gateway's labels:"; echo "$probed"
  expect_probe "$probed" "$TFS_HOST:8500" blocked
  expect_probe "$probed" "$TFS_HOST:8501" blocked
  expect_probe "$probed" "$GATEWAY_HOST:80" open
done
kubectl delete namespace e2e-other --wait=false >/dev/null
probed="$(kubectl -n "$NS" exec "deploy/$RELEASE-clothing-model-gateway" -- python3 -c "$CONNECT_PROBE" \
  "$TFS_HOST:8500" "$TFS_HOST:8501")"
echo "from the gateway:"; echo "$probed"
expect_probe "$probed" "$TFS_HOST:8500" open
expect_probe "$probed" "$TFS_HOST:8501" blocked
stage "rung 3b: NetworkPolicies enforced: only the gateway reaches TF Serving, on gRPC only; DNS resolved"

# --- 3. zero-downtime upgrade ---------------------------------------------------------------------------------
stop="$(mktemp -u)"
python3 "$ROOT/tests/cluster/request_loop.py" --url "$URL" --image "$PANTS" --expect pants --workers 2 \
  --until-file "$stop" --max-seconds 600 >"$NODE/upgrade-loop.json" &
loop=$!
sleep 5
start=$SECONDS
revision_before="$(kubectl -n "$NS" get deploy -o jsonpath='{range .items[*]}{.metadata.name}={.metadata.annotations.deployment\.kubernetes\.io/revision} {end}')"
helm upgrade "$RELEASE" "$CHART" -f "$VALUES" -n "$NS" --reuse-values --wait --timeout 10m \
  --set gateway.logLevel=debug --set-string 'tfServing.podAnnotations.e2e/upgrade=1' >/dev/null
kubectl -n "$NS" rollout status deploy --timeout 5m >/dev/null
sleep 20  # the old pods' preStop and drain windows, and requests after them
touch "$stop"
wait $loop || true
rm -f "$stop"
revision_after="$(kubectl -n "$NS" get deploy -o jsonpath='{range .items[*]}{.metadata.name}={.metadata.annotations.deployment\.kubernetes\.io/revision} {end}')"
echo "deployment revisions: before [$revision_before] after [$revision_after]"
echo "request loop during the upgrade: $(cat "$NODE/upgrade-loop.json")"
python3 - "$revision_before" "$revision_after" "$NODE/upgrade-loop.json" <<'EOF' || die "the upgrade was not zero-downtime"
import json, sys
before = dict(item.split("=") for item in sys.argv[1].split())
after = dict(item.split("=") for item in sys.argv[2].split())
report = json.load(open(sys.argv[3]))
rolled = [name for name in after if after[name] != before.get(name)]
assert len(rolled) == 2, f"expected both Deployments to roll, rolled: {rolled}"
assert report["total"] > 0 and report["errors"] == 0, report
EOF
stage "rung 4: helm upgrade rolled both Deployments in $((SECONDS - start)) s with zero failed requests"

# --- 4. client load balancing over 2 TF Serving replicas, then faults under load ---------------------------------
# The model on a PersistentVolume (a hostPath directory on the node) so that faults.sh can place a new version.
MODELS_PV="$NODE/e2e-models"
kubectl -n "$NS" delete pvc e2e-models --ignore-not-found --wait >/dev/null  # an earlier run's
kubectl delete pv e2e-models --ignore-not-found --wait >/dev/null
rm -rf "$MODELS_PV"
mkdir -p "$MODELS_PV/clothing-model"
cp -a "$ROOT/model-tools/models/clothing-model/1" "$MODELS_PV/clothing-model/1"
chmod -R a+rX "$MODELS_PV"
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: e2e-models}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadOnlyMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  hostPath: {path: $MODELS_PV, type: Directory}
  claimRef: {namespace: $NS, name: e2e-models}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: e2e-models, namespace: $NS}
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  volumeName: e2e-models
  resources: {requests: {storage: 1Gi}}
EOF
start=$SECONDS
# `client` mode's Service is headless: clusterIP cannot change in place, so it is recreated (helm upgrade puts it
# back; the models rung below does the same on the way back).
kubectl -n "$NS" delete svc "$RELEASE-clothing-model-tf-serving" --wait >/dev/null
helm upgrade "$RELEASE" "$CHART" -f "$VALUES" -n "$NS" --reuse-values --wait --timeout 10m \
  --set tfServing.replicaCount=2 --set loadBalancing.mode=client --set loadBalancing.maxConnectionAgeMs=5000 \
  --set gateway.replicaCount=2 --set gateway.workers=2 \
  --set tfServing.modelSource.type=pvc --set tfServing.modelSource.pvc.claimName=e2e-models >/dev/null
kubectl -n "$NS" rollout status deploy --timeout 5m >/dev/null
wait_for 120 "2 TF Serving pods and 2 gateway pods" bash -c \
  "[ \"\$(kubectl -n $NS get pods -o name | grep -c -e -tf-serving- -e -gateway-)\" = 4 ]"
sleep 12  # longer than maxConnectionAgeMs: every gateway connection re-resolved with both TF Serving pods ready
tf_counts() { # podIP=count of OK Predict requests, per TF Serving pod
  local ip
  for ip in $(kubectl -n "$NS" get pods -l app.kubernetes.io/component=tf-serving \
    --field-selector=status.phase=Running -o jsonpath='{.items[*].status.podIP}'); do
    printf '%s=%s ' "$ip" "$(curl -sf --max-time 5 "http://$ip:8501/monitoring/prometheus/metrics" \
      | awk '/^:tensorflow:serving:request_count\{.*status="OK"/ {s += $NF} END {print s + 0}')"
  done
}
before="$(tf_counts)"
python3 "$ROOT/tests/cluster/request_loop.py" --url "$URL" --image "$PANTS" --expect pants --workers 4 \
  --count 200 >"$NODE/spread.json" || die "requests failed in client mode: $(cat "$NODE/spread.json")"
after="$(tf_counts)"
python3 - "$before" "$after" <<'EOF'
import sys
before, after = (dict(i.split("=") for i in arg.split()) for arg in sys.argv[1:])
split = {ip: int(after[ip]) - int(before.get(ip, 0)) for ip in after if ip in before}
total = sum(split.values())
print("client mode: 200 requests -> " + ", ".join(f"{ip}: {n} ({100 * n / max(total, 1):.0f}%)" for ip, n in sorted(split.items())))
assert len(split) == 2 and min(split.values()) >= 0.2 * total, f"client mode did not spread: {split}"
EOF
stage "rung 5: client mode spread the requests over 2 TF Serving pods ($((SECONDS - start)) s)"
source "$ROOT/tests/cluster/faults.sh"

# --- 5. many models: canary, shadow, promotion and retirement without a failed request -----------------------
MODELS_VALUES="$(mktemp --suffix=.yaml)"
models_upgrade() { # VERSIONS STABLE: the release serving clothing-model's VERSIONS (JSON list), `stable` on STABLE
  python3 - "$ROOT/model-tools/models/clothing-model/1/assets.extra/model-contract.json" "$1" "$2" \
    >"$MODELS_VALUES" <<'PY'
import json, sys
contract, versions, stable = json.load(open(sys.argv[1])), json.loads(sys.argv[2]), int(sys.argv[3])
print(json.dumps({
    "tfServing": {"image": {"repository": "localhost/clothing-model-server-rollout"}, "replicaCount": 1,
                  "modelConfigPollSeconds": 2},
    "loadBalancing": {"mode": "none"},
    "gateway": {"workers": 2},
    "models": [
        {**contract, "versions": versions, "versionLabels": {"stable": stable, "canary": 2},
         "canary": {"label": "canary", "weight": 20}, "shadow": {"label": "canary", "percent": 100}},
        {**contract, "name": "clothing-model-exact", "preprocessing": "exact"},
    ],
}))
PY
  helm upgrade "$RELEASE" "$CHART" -f "$VALUES" -f "$MODELS_VALUES" -n "$NS" --wait --timeout 10m >/dev/null
}
tfs_ip() {
  kubectl -n "$NS" get pods -l app.kubernetes.io/component=tf-serving --field-selector=status.phase=Running \
    -o jsonpath='{.items[0].status.podIP}'
}
tfs_pod() { # name=uid:restarts of the TF Serving pods
  kubectl -n "$NS" get pods -l app.kubernetes.io/component=tf-serving --field-selector=status.phase=Running \
    -o jsonpath='{range .items[*]}{.metadata.name}={.metadata.uid}:{.status.containerStatuses[0].restartCount} {end}'
}
label_is() { # LABEL VERSION: TF Serving maps clothing-model's label to that version (its REST metadata)
  [ "$(curl -sf --max-time 5 "http://$(tfs_ip):8501/v1/models/clothing-model/labels/$1/metadata" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["model_spec"]["version"])')" = "$2" ]
}
version_states() { # clothing-model's versions as TF Serving reports them: version:state ...
  curl -sf --max-time 5 "http://$(tfs_ip):8501/v1/models/clothing-model" | python3 -c \
    'import json,sys; print(" ".join(v["version"] + ":" + v["state"] for v in json.load(sys.stdin)["model_version_status"]))'
}
version_1_unloaded() { version_states | grep -q '1:END'; }
promote() { models_upgrade "[1, 2]" 2 && wait_for 180 "TF Serving to map stable to version 2" label_is stable 2; }
retire() { models_upgrade "[2]" 2 && wait_for 180 "TF Serving to unload version 1" version_1_unloaded; }
start=$SECONDS
kubectl -n "$NS" delete svc "$RELEASE-clothing-model-tf-serving" --wait >/dev/null  # client mode's was headless
models_upgrade "[1, 2]" 1
kubectl -n "$NS" rollout status deploy --timeout 5m >/dev/null
wait_for 120 "one TF Serving pod and one gateway pod" bash -c \
  "[ \"\$(kubectl -n $NS get pods -o name | grep -c -e -tf-serving- -e -gateway-)\" = 2 ]"
helm test "$RELEASE" -n "$NS" --timeout 5m
stage "many models installed in $((SECONDS - start)) s; helm test classified once per model and per label"
python3 "$ROOT/tests/cluster/request_loop.py" --url "$URL" --image "$PANTS" --expect pants --workers 4 --count 500 \
  >"$NODE/canary-split.json" || die "requests failed under the canary: $(cat "$NODE/canary-split.json")"
echo "500 requests under canary weight 20: $(cat "$NODE/canary-split.json")"
gateway_ip="$(kubectl -n "$NS" get pods -l app.kubernetes.io/component=gateway --field-selector=status.phase=Running \
  -o jsonpath='{.items[0].status.podIP}')"
sleep 2  # the last shadow copies
shadow="$(curl -sf --max-time 5 "http://$gateway_ip:9696/metrics" | grep -E '^gateway_shadow_(requests|comparisons)_total')"
echo "$shadow"
python3 - "$NODE/canary-split.json" "$shadow" <<'PY' || die "the canary share or the shadow comparisons are off"
import json, re, sys
labels = json.load(open(sys.argv[1]))["by_version_label"]
share = 100 * labels.get("canary", 0) / sum(labels.values())
print(f"canary share: {share:.1f} % of {sum(labels.values())} requests ({labels})")
assert 15 <= share <= 25, share
compared = {top1: float(count) for top1, count in re.findall(r'top1="(\w+)"\} (\S+)', sys.argv[2])}
assert compared.get("same", 0) >= labels["stable"] and compared.get("different", 0) == 0, compared
PY
stage "rung 6: canary share and shadow agreement measured"
before="$(tfs_pod)"
during promote promote
during retire retire
after="$(tfs_pod)"
echo "TF Serving pod before [$before] after [$after]; clothing-model versions: $(version_states)"
[ "$before" = "$after" ] || die "the TF Serving pod was replaced or restarted by a label move or a version removal"
rm -f "$MODELS_VALUES"
stage "rung 7: stable moved to version 2 and version 1 retired with zero failed requests; TF Serving kept running"

# --- 6. uninstall ---------------------------------------------------------------------------------------------
if [ "${E2E_KEEP:-0}" = 1 ]; then
  stage "release kept (E2E_KEEP=1)"
  exit 0
fi
helm uninstall "$RELEASE" -n "$NS" --wait --timeout 5m
wait_for 120 "the release's pods to go" bash -c "[ -z \"\$(kubectl -n $NS get pods -o name)\" ]"
left="$(kubectl -n "$NS" get all,cm,secret,sa,pdb,networkpolicy -l "app.kubernetes.io/instance=$RELEASE" -o name)"
[ -z "$left" ] || die "helm uninstall left: $left"
kubectl delete namespace "$NS" --wait --timeout 2m >/dev/null
kubectl delete pv e2e-models --wait >/dev/null
stage "helm uninstall removed everything; e2e passed"
