#!/usr/bin/env bash
# Starts a real Kubernetes control plane on loopback: etcd, kube-apiserver (with Pod Security admission),
# kube-controller-manager and kube-scheduler, with locally generated certificates and service-account keys.
# State (pki, etcd data, logs, kubeconfig) lives in .tools/cluster/ (ignored by git). Idempotent: a healthy
# control plane is left as it is; leftovers of a crashed one are cleaned up first. The API server has the
# ImageVolume feature gate on (default from Kubernetes 1.35), so pods with `image` volumes are validated and admitted
# as a 1.35 server would; the node's containerd (1.6) cannot mount them, so no such pod runs here.
source "$(dirname "$0")/../lib.sh"
STATE="$ROOT/.tools/cluster"
KUBECONFIG_FILE="$STATE/kubeconfig"

command -v openssl >/dev/null || die "openssl is required to generate the cluster's certificates (apt-get install openssl)"
bash "$ROOT/tools/cluster/build.sh"

alive() { [ -f "$STATE/pids/$1" ] && kill -0 "$(cat "$STATE/pids/$1")" 2>/dev/null; }
if alive etcd && alive kube-apiserver && alive kube-controller-manager && alive kube-scheduler \
  && "$TOOLS_BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" get --raw /readyz >/dev/null 2>&1; then
  log "control plane already running (KUBECONFIG=$KUBECONFIG_FILE)"
  exit 0
fi
bash "$ROOT/tools/cluster/apiserver-down.sh" >/dev/null 2>&1 || true
mkdir -p "$STATE"/{pki,logs,pids,etcd}
chmod 700 "$STATE/etcd"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ETCD_PORT=$(free_port); ETCD_PEER_PORT=$(free_port); API_PORT=$(free_port)
printf 'ETCD_PORT=%s\nAPI_PORT=%s\n' "$ETCD_PORT" "$API_PORT" >"$STATE/ports.env"

# --- certificates and keys ---------------------------------------------------------------------------------
pki="$STATE/pki"
openssl_quiet() { openssl "$@" 2>/dev/null; }
openssl_quiet req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=clothing-model-test-ca" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt"
issue() { # NAME SUBJECT [SAN]
  local name=$1 subject=$2 san=${3:-}
  openssl_quiet req -newkey rsa:2048 -nodes -subj "$subject" -keyout "$pki/$name.key" -out "$pki/$name.csr"
  if [ -n "$san" ]; then printf 'subjectAltName=%s\n' "$san" >"$pki/$name.ext"; else : >"$pki/$name.ext"; fi
  openssl_quiet x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 2 \
    -extfile "$pki/$name.ext" -out "$pki/$name.crt"
}
issue apiserver "/CN=kube-apiserver" \
  "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
issue admin "/O=system:masters/CN=admin"
# The aggregation layer (metrics-server's metrics.k8s.io): the API server proxies as front-proxy-client, a
# certificate of its own CA, which aggregated servers trust for the user it names (requestheader).
openssl_quiet req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=clothing-model-front-proxy-ca" \
  -keyout "$pki/front-proxy-ca.key" -out "$pki/front-proxy-ca.crt"
openssl_quiet req -newkey rsa:2048 -nodes -subj "/CN=front-proxy-client" -keyout "$pki/front-proxy-client.key" \
  -out "$pki/front-proxy-client.csr"
openssl_quiet x509 -req -in "$pki/front-proxy-client.csr" -CA "$pki/front-proxy-ca.crt" -CAkey "$pki/front-proxy-ca.key" \
  -CAcreateserial -days 2 -out "$pki/front-proxy-client.crt"
openssl_quiet genrsa -out "$pki/sa.key" 2048
openssl_quiet rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

"$TOOLS_BIN/kubectl" config set-cluster local --kubeconfig "$KUBECONFIG_FILE" --server "https://127.0.0.1:$API_PORT" \
  --certificate-authority "$pki/ca.crt" --embed-certs >/dev/null
"$TOOLS_BIN/kubectl" config set-credentials admin --kubeconfig "$KUBECONFIG_FILE" \
  --client-certificate "$pki/admin.crt" --client-key "$pki/admin.key" --embed-certs >/dev/null
"$TOOLS_BIN/kubectl" config set-context local --kubeconfig "$KUBECONFIG_FILE" --cluster local --user admin >/dev/null
"$TOOLS_BIN/kubectl" config use-context local --kubeconfig "$KUBECONFIG_FILE" >/dev/null
chmod 600 "$KUBECONFIG_FILE"

# --- processes ---------------------------------------------------------------------------------------------
start() { # NAME ARGS...: runs `kube NAME ARGS` in its own session, logs to logs/NAME.log
  local name=$1; shift
  setsid "$TOOLS_BIN/$name" "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/pids/$name"
}
wait_for() { # SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { tail -20 "$STATE"/logs/*.log >&2; die "timed out waiting for $what"; }
    sleep 0.5
  done
}

start etcd --name test --data-dir "$STATE/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "test=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls "" --log-level warn
wait_for 60 etcd curl -sf "http://127.0.0.1:$ETCD_PORT/health"

start kube-apiserver --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --secure-port "$API_PORT" --advertise-address 127.0.0.1 \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" --client-ca-file "$pki/ca.crt" \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=false --profiling=false \
  --kubelet-client-certificate "$pki/admin.crt" --kubelet-client-key "$pki/admin.key" \
  --kubelet-preferred-address-types InternalIP,Hostname \
  --requestheader-client-ca-file "$pki/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- --proxy-client-cert-file "$pki/front-proxy-client.crt" \
  --proxy-client-key-file "$pki/front-proxy-client.key" --enable-aggregator-routing=true \
  --feature-gates ImageVolume=true
wait_for 180 kube-apiserver "$TOOLS_BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" get --raw /readyz

start kube-controller-manager --kubeconfig "$KUBECONFIG_FILE" --authentication-kubeconfig "$KUBECONFIG_FILE" \
  --authorization-kubeconfig "$KUBECONFIG_FILE" --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" --use-service-account-credentials \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --service-cluster-ip-range 10.96.0.0/16 --controllers '*,-nodeipam'
start kube-scheduler --kubeconfig "$KUBECONFIG_FILE" --authentication-kubeconfig "$KUBECONFIG_FILE" \
  --authorization-kubeconfig "$KUBECONFIG_FILE" --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false
# The service-account controller creating `default` proves the controller-manager is working.
wait_for 120 "kube-controller-manager" "$TOOLS_BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" -n default get serviceaccount default
log "control plane up: export KUBECONFIG=$KUBECONFIG_FILE"
