# The book's KServe path on real pods: KServe's own controller (tools/cluster/kserve-up.sh: built from its Go module,
# run on the host, Standard mode, its webhooks on loopback) reconciles the chart's InferenceService
# (charts/clothing-model/ci/kserve-values.yaml) in a namespace enforcing restricted Pod Security. The stock
# kserve-tensorflow-serving runtime runs our TF Serving image (the stand-in's tensorflow_model_server) with its flags
# unchanged and loads the committed model from pvc:// (a hostPath PersistentVolume), which KServe's pod webhook
# mounts at /mnt/models; our gateway image is the transformer. The InferenceService becomes Ready by the
# controller's conditions; helm test passes; the book's request `{"instances": [{"url": ...}]}` gets pants through
# the transformer's Service; helm uninstall leaves nothing. Sourced by e2e.sh (its ROOT, CHART, VALUES, NODE, NODE_IP,
# stage, hostpath_claim and the cluster helpers).
# shellcheck shell=bash
KNS=e2e-kserve
KRELEASE=book
ISVC=clothing-model
IMAGE_PORT=29680

kserve_dump() {
  echo "=== the KServe rung failed: state of namespace $KNS ===" >&2
  kubectl -n "$KNS" get inferenceservices -o yaml >&2 || true
  kubectl -n "$KNS" get all,pvc -o wide >&2 || true
  kubectl -n "$KNS" describe pods >&2 || true
  kubectl -n "$KNS" logs -l serving.kserve.io/inferenceservice="$ISVC" --all-containers --tail=60 >&2 || true
  kubectl -n "$KNS" get events --sort-by=.lastTimestamp >&2 || true
  echo "--- KServe controller's errors (last 5)" >&2
  grep '"level":"error"' "$NODE/logs/kserve-manager.log" | tail -5 | cut -c1-600 >&2 || true
}

start=$SECONDS
bash "$ROOT/tools/cluster/kserve-up.sh" localhost/clothing-model-tf-serving:dev
kubectl create namespace "$KNS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$KNS" --overwrite pod-security.kubernetes.io/enforce=restricted \
  pod-security.kubernetes.io/warn=restricted >/dev/null

# The model's base directory (numeric versions inside) on a PersistentVolume: storageUri pvc://kserve-models/<dir>.
KSERVE_PV="$NODE/kserve-models"
rm -rf "$KSERVE_PV" && mkdir -p "$KSERVE_PV"
cp -r "$ROOT/model-tools/models/clothing-model" "$KSERVE_PV/clothing-model"
chmod -R a+rX "$KSERVE_PV"
hostpath_claim "$KNS" kserve-models "$KSERVE_PV"

# The image host of the book's request: the photo served on the node, the only private address the gateway may fetch.
python3 -m http.server --bind "$NODE_IP" --directory "$ROOT/tests/data" "$IMAGE_PORT" >/dev/null 2>&1 &
image_host=$!
trap 'status=$?; kill $image_host 2>/dev/null; [ $status -eq 0 ] || { kserve_dump; dump; }; exit $status' EXIT

helm install "$KRELEASE" "$CHART" -n "$KNS" -f "$CHART/ci/kserve-values.yaml" -f "$VALUES" \
  --set kserve.predictor.storageUri=pvc://kserve-models/clothing-model \
  --set kserve.predictor.serviceAccount.create=false \
  --set kserve.predictor.resources.requests.cpu=100m --set kserve.predictor.resources.requests.memory=256Mi \
  --set-json "gateway.allowedNetworks=[\"$NODE_IP/32\"]" >/dev/null
isvc_conditions() {
  kubectl -n "$KNS" get inferenceservice "$ISVC" \
    -o jsonpath='{range .status.conditions[*]}  {.type}={.status} {.reason}{"\n"}{end}'
}
# KServe 0.20's Ready in Standard mode covers the predictor and the ingress, not the transformer: both are awaited.
kubectl -n "$KNS" wait --for condition=Ready "inferenceservice/$ISVC" --timeout 5m >/dev/null \
  || die "the InferenceService did not become Ready"
echo "InferenceService $ISVC when Ready, the controller's conditions:"; isvc_conditions
kubectl -n "$KNS" wait --for condition=TransformerReady "inferenceservice/$ISVC" --timeout 5m >/dev/null \
  || die "the InferenceService's transformer did not become ready"
echo "then:"; isvc_conditions
echo "what the controller created:"
kubectl -n "$KNS" get deploy,svc,hpa,pods -l "serving.kserve.io/inferenceservice=$ISVC" -o wide
echo "the transformer's arguments (KServe's): $(kubectl -n "$KNS" get deploy "$ISVC-transformer" \
  -o jsonpath='{.spec.template.spec.containers[0].args}')"
echo "the predictor's model mount (KServe's pod webhook): $(kubectl -n "$KNS" get pods \
  -l "serving.kserve.io/inferenceservice=$ISVC,component=predictor" \
  -o jsonpath='{.items[0].spec.containers[0].volumeMounts[?(@.mountPath=="/mnt/models")]}')"
stage "KServe rung: the controller reconciled the InferenceService, predictor and transformer ready in $((SECONDS - start)) s"

helm test "$KRELEASE" -n "$KNS" --timeout 5m
transformer="$(kubectl -n "$KNS" get svc "$ISVC-transformer" -o jsonpath='{.spec.clusterIP}')"
answer="$(curl -sS --max-time 30 "http://$transformer/v1/models/$ISVC:predict" -H 'Content-Type: application/json' \
  -d "{\"instances\": [{\"url\": \"http://$NODE_IP:$IMAGE_PORT/pants.jpg\"}]}")"
echo "POST /v1/models/$ISVC:predict {\"instances\": [{\"url\": ...pants.jpg}]} -> $answer"
answers_pants() { # JSON: a V1 answer whose one prediction ranks pants first
  python3 -c 'import json, sys; (s,) = json.loads(sys.argv[1])["predictions"]; assert max(s, key=s.get) == "pants", s' "$1"
}
answers_pants "$answer" || die "the transformer did not answer pants"
sdk="$("$ROOT/.venv-kserve-sdk/bin/python" "$ROOT/tests/cluster/kserve_client.py" "http://$transformer" "$ISVC" \
  "http://$NODE_IP:$IMAGE_PORT/pants.jpg")"
echo "the KServe SDK's V1 client (kserve.InferenceRESTClient) -> $sdk"
answers_pants "$sdk" || die "the KServe SDK's client did not get pants"
stage "KServe rung: helm test passed; the book's request and the KServe SDK's V1 client got pants through the transformer"

# The transformer switched to TF Serving's gRPC port (9000, which the chart then declares on the predictor) by a helm
# upgrade, under a request loop through the transformer's Service.
to_grpc() {
  helm upgrade "$KRELEASE" "$CHART" -n "$KNS" --reuse-values --set kserve.predictor.protocol=grpc >/dev/null
  wait_for 120 "KServe to update the transformer" bash -c "kubectl -n $KNS get deploy $ISVC-transformer -o json \
    | grep -q '\"value\": \"grpc\"'"
  kubectl -n "$KNS" rollout status deploy "$ISVC-predictor" "$ISVC-transformer" --timeout 5m >/dev/null
}
URL="http://$transformer/predict" during kserve-grpc to_grpc
echo "the predictor's Service: $(kubectl -n "$KNS" get svc "$ISVC-predictor" -o jsonpath='{.spec.ports}')"
stage "KServe rung: helm upgrade moved the transformer to the predictor's gRPC port with zero failed requests"

helm uninstall "$KRELEASE" -n "$KNS" --wait --timeout 5m >/dev/null
wait_for 180 "the InferenceService's pods to go" bash -c "[ -z \"\$(kubectl -n $KNS get pods -o name)\" ]"
left="$(kubectl -n "$KNS" get inferenceservices,deploy,svc,hpa,cm,sa -o name | grep -v -e configmap/kube-root-ca.crt \
  -e serviceaccount/default || true)"
[ -z "$left" ] || die "helm uninstall left: $left"
kubectl delete namespace "$KNS" --wait --timeout 2m >/dev/null
kubectl delete pv kserve-models --wait >/dev/null
kill $image_host
trap 'status=$?; [ $status -eq 0 ] || dump; exit $status' EXIT
stage "KServe rung: helm uninstall removed the InferenceService and everything the controller had made"
