#!/usr/bin/env bash
# KServe on the local cluster (the e2e's KServe rung): KServe's CRDs, its inferenceservice-config and the stock
# kserve-tensorflow-serving ClusterServingRuntime, all from its Go module at KSERVE_VERSION, and its controller
# (tools/cluster/kserve, built by host-binaries.sh) run on the host with the admin kubeconfig, its webhooks served
# on loopback with a certificate of a local CA. Standard (raw Deployment) mode, no Knative, Istio or Ingress
# (tests/cluster/kserve_config.py). The runtime's image is ours: TF Serving's flags reach tensorflow_model_server
# unchanged. Idempotent; cluster-down.sh stops the controller.
#   bash tools/cluster/kserve-up.sh TF_SERVING_IMAGE
source "$(dirname "$0")/cluster-env.sh"
image=${1:?usage: kserve-up.sh TF_SERVING_IMAGE}

module="$(go_module_dir github.com/kserve/kserve "$KSERVE_VERSION")"
render() { "$ROOT/.venv/bin/python" "$ROOT/tests/cluster/kserve_config.py" "$module" "$@"; }
state="$NODE/kserve"
certs="$state/k8s-webhook-server/serving-certs"  # controller-runtime's default under TMPDIR
mkdir -p "$certs"

if ! alive kserve-manager; then
  # A stopped controller's webhooks would refuse what follows.
  render webhooks https://127.0.0.1 /dev/null | kubectl delete --ignore-not-found -f - >/dev/null
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=clothing-model-kserve-webhook-ca" \
    -keyout "$state/ca.key" -out "$state/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kserve-webhook" -keyout "$certs/tls.key" -out "$state/tls.csr" \
    2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\n' >"$state/tls.ext"
  openssl x509 -req -in "$state/tls.csr" -CA "$state/ca.crt" -CAkey "$state/ca.key" -CAcreateserial -days 2 \
    -extfile "$state/tls.ext" -out "$certs/tls.crt" 2>/dev/null

  crds=()
  for file in serving.kserve.io_{inferenceservices,servingruntimes,clusterservingruntimes,trainedmodels,inferencegraphs}.yaml \
    clusterstoragecontainer/serving.kserve.io_clusterstoragecontainers.yaml; do
    kubectl apply --server-side -f "$module/config/crd/full/$file" >/dev/null
    file="${file#*serving.kserve.io_}"
    crds+=("crd/${file%.yaml}.serving.kserve.io")
  done
  wait_for 60 "KServe's CRDs" kubectl wait --for condition=Established --timeout 5s "${crds[@]}"
  render config | kubectl apply --server-side -f - >/dev/null

  log "starting the KServe controller $KSERVE_VERSION"
  POD_NAMESPACE=kserve TMPDIR="$state" start_daemon kserve-manager "$TOOLS_BIN/kserve-manager" \
    --webhook-port "$KSERVE_WEBHOOK_PORT" --metrics-addr 0 --health-probe-addr "127.0.0.1:$KSERVE_HEALTH_PORT"
  wait_for 120 "the KServe controller's webhook server" curl -sf "http://127.0.0.1:$KSERVE_HEALTH_PORT/readyz"
fi
render webhooks "https://127.0.0.1:$KSERVE_WEBHOOK_PORT" "$state/ca.crt" | kubectl apply --server-side -f - >/dev/null
render runtime "$image" | kubectl apply --server-side -f - >/dev/null
log "KServe $KSERVE_VERSION is up: controller pid $(cat "$NODE/pids/kserve-manager"), webhooks on 127.0.0.1:$KSERVE_WEBHOOK_PORT"
