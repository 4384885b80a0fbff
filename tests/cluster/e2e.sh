#!/usr/bin/env bash
# The user story on real pods, on the local single-node cluster (cluster-up.sh starts it when it is not running):
#   1. a pod of ours runs as non-root under restricted Pod Security and resolves a Service through CoreDNS;
#   2. helm install (namespace `models` enforcing restricted Pod Security) --wait; helm test (the pants hook pod
#      runs for real); a request through the gateway's NodePort (kube-proxy) returns pants;
#   3. helm upgrade changing a value rolls both Deployments while a bounded request loop sees zero errors;
#   4. TF Serving with 2 replicas: the request split over the two pods in `none` and in `client` mode;
#   5. helm uninstall leaves nothing of the release.
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

node_healthy || bash "$ROOT/tools/cluster/cluster-up.sh"
stage "cluster ready"

kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$NS" --overwrite pod-security.kubernetes.io/enforce=restricted \
  pod-security.kubernetes.io/warn=restricted pod-security.kubernetes.io/audit=restricted >/dev/null

# --- 1. a plain pod: non-root under restricted Pod Security, DNS, a Service through kube-proxy --------------------
kubectl -n "$NS" delete pod e2e-probe --ignore-not-found --wait >/dev/null
kubectl -n "$NS" apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: e2e-probe}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext: {runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: probe
      image: localhost/clothing-model-base:dev
      imagePullPolicy: Never
      command: [python3, -c]
      args:
        - |
          import os, socket
          print("uid", os.getuid(), "gid", os.getgid())
          print("kubernetes.default ->", socket.gethostbyname("kubernetes.default.svc.cluster.local"))
          print("kube-dns search path ok:", socket.gethostbyname("kubernetes.default") == socket.gethostbyname("kubernetes.default.svc.cluster.local"))
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {drop: [ALL]}
      resources: {limits: {memory: 64Mi}, requests: {cpu: 10m, memory: 32Mi}}
EOF
wait_for 60 "pod e2e-probe to complete" bash -c \
  "[ \"\$(kubectl -n $NS get pod e2e-probe -o jsonpath='{.status.phase}')\" = Succeeded ]"
probe="$(kubectl -n "$NS" logs e2e-probe)"
echo "$probe"
grep -q '^uid 10001 gid 10001$' <<<"$probe" || die "the probe pod did not run as 10001:10001"
grep -q '^kubernetes.default -> 10.96.0.1$' <<<"$probe" || die "CoreDNS did not resolve kubernetes.default"
kubectl -n "$NS" delete pod e2e-probe --wait >/dev/null
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

# --- 4. load spread over 2 TF Serving replicas: `none` vs `client` ----------------------------------------------
tf_counts() { # podIP=count of OK Predict requests, per TF Serving pod
  local ip
  for ip in $(kubectl -n "$NS" get pods -l app.kubernetes.io/component=tf-serving \
    --field-selector=status.phase=Running -o jsonpath='{.items[*].status.podIP}'); do
    printf '%s=%s ' "$ip" "$(curl -sf --max-time 5 "http://$ip:8501/monitoring/prometheus/metrics" \
      | awk '/^:tensorflow:serving:request_count\{.*status="OK"/ {s += $NF} END {print s + 0}')"
  done
}
spread() { # MODE: sets the mode with 2 replicas and one gateway worker (one channel), sends requests, prints the split
  local mode=$1 svc="$RELEASE-clothing-model-tf-serving"
  # `none` is a ClusterIP Service, `client` a headless one: clusterIP cannot change in place, so switching modes
  # recreates the Service (helm upgrade puts it back).
  if [ "$(kubectl -n "$NS" get svc "$svc" -o jsonpath='{.spec.clusterIP}')" != "$([ "$mode" = client ] && echo None || kubectl -n "$NS" get svc "$svc" -o jsonpath='{.spec.clusterIP}')" ]; then
    kubectl -n "$NS" delete svc "$svc" --wait >/dev/null
  fi
  helm upgrade "$RELEASE" "$CHART" -f "$VALUES" -n "$NS" --reuse-values --wait --timeout 10m \
    --set tfServing.replicaCount=2 --set "loadBalancing.mode=$mode" \
    --set gateway.workers=1 --set loadBalancing.maxConnectionAgeMs=5000 >/dev/null
  kubectl -n "$NS" rollout status deploy --timeout 5m >/dev/null
  # Fresh gateway processes (their connections are made after both TF Serving pods are ready).
  kubectl -n "$NS" rollout restart deploy -l app.kubernetes.io/component=gateway >/dev/null
  kubectl -n "$NS" rollout status deploy --timeout 5m >/dev/null
  # Old pods gone (a terminating pod still counts as Running), then a moment for the gateway's connections.
  wait_for 120 "2 TF Serving pods and 1 gateway pod" bash -c "[ \"\$(kubectl -n $NS get pods -o name | grep -c -e -tf-serving- -e -gateway-)\" = 3 ]"
  # Longer than maxConnectionAgeMs: in `client` mode every connection has been re-resolved with both pods ready.
  sleep 12
  local before after
  before="$(tf_counts)"
  python3 "$ROOT/tests/cluster/request_loop.py" --url "$URL" --image "$PANTS" --expect pants --workers 4 \
    --count 200 >"$NODE/spread-$mode.json" || die "requests failed in $mode mode: $(cat "$NODE/spread-$mode.json")"
  after="$(tf_counts)"
  python3 - "$mode" "$before" "$after" <<'EOF'
import sys
mode, before, after = sys.argv[1], dict(i.split("=") for i in sys.argv[2].split()), dict(i.split("=") for i in sys.argv[3].split())
split = {ip: int(after[ip]) - int(before.get(ip, 0)) for ip in after if ip in before}
total = sum(split.values())
print(f"{mode}: 200 requests -> " + ", ".join(f"{ip}: {n} ({100 * n / max(total, 1):.0f}%)" for ip, n in sorted(split.items())))
if mode == "client":
    assert len(split) == 2 and min(split.values()) >= 0.2 * total, f"client mode did not spread: {split}"
EOF
}
spread none
spread client
stage "rung 5: load spread measured"

# --- 5. uninstall ---------------------------------------------------------------------------------------------
if [ "${E2E_KEEP:-0}" = 1 ]; then
  stage "release kept (E2E_KEEP=1)"
  exit 0
fi
helm uninstall "$RELEASE" -n "$NS" --wait --timeout 5m
wait_for 120 "the release's pods to go" bash -c "[ -z \"\$(kubectl -n $NS get pods -o name)\" ]"
left="$(kubectl -n "$NS" get all,cm,secret,sa,pdb,networkpolicy -l "app.kubernetes.io/instance=$RELEASE" -o name)"
[ -z "$left" ] || die "helm uninstall left: $left"
kubectl delete namespace "$NS" --wait --timeout 2m >/dev/null
stage "helm uninstall removed everything; e2e passed"
