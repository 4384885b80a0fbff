#!/usr/bin/env bash
# A single-node Kubernetes on this machine, for the end-to-end tests: the control plane of apiserver-up.sh, plus
#   containerd (Debian) with a private config, root, state and socket, runc, cgroupfs;
#   CNI: Debian's bridge + host-local plugins, a private conf/bin dir, pods on 10.244.0.0/24 behind bridge cmbr0,
#        whose address 10.244.0.1 is also the node's IP (kubelet, NodePorts) and the cluster DNS address;
#   kubelet and kube-proxy (iptables mode) from the same multi-call build as the control plane, as host processes;
#   CoreDNS (tools/go/coredns: only the plugins the Corefile uses) on the host, serving cluster.local on
#        10.244.0.1:53 from the API server (pods cannot reach the API server, which listens on loopback; the chart's
#        pods do not need it);
#   kube-router's network policy controller (built from its Go module) on the host, enforcing NetworkPolicies with
#        iptables and ipsets (its routing, service proxy and CNI parts off);
#   metrics-server (built from its Go module) on the host, serving metrics.k8s.io through the API server's
#        aggregation layer, so HorizontalPodAutoscalers scale on CPU;
#   the images of tools/cluster/images.sh imported into containerd (no registry).
# Node state lives in .tools/node (git-ignored), runtime state and sockets in /run/clothing-model. Idempotent: a
# healthy cluster is left as it is; the leftovers of a crashed one are removed first (cluster-down.sh).
# Needs root. Undo everything with tools/cluster/cluster-down.sh.
source "$(dirname "$0")/cluster-env.sh"
begin=$SECONDS
stage() { log "$1 ($((SECONDS - begin)) s)"; }

bash "$ROOT/tools/cluster/build.sh"
bash "$ROOT/tools/cluster/prepare.sh"
stage "binaries and images ready"

if node_healthy; then
  bash "$ROOT/tools/cluster/apiserver-up.sh"
  log "cluster already running (KUBECONFIG=$KUBECONFIG_FILE)"
  exit 0
fi
bash "$ROOT/tools/cluster/cluster-down.sh" --quiet  # the leftovers of an earlier run, if any
bash "$ROOT/tools/cluster/apiserver-up.sh"
stage "control plane up"
mkdir -p "$NODE"/{logs,pids,cni/net.d,cni/bin,cni/ipam,containerd,kubelet,pod-logs,pki} "$RUN"

# --- host settings (restored by cluster-down.sh) ----------------------------------------------------------------
{
  echo "ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)"
  echo "bridge_nf_call_iptables=$(cat /proc/sys/net/bridge/bridge-nf-call-iptables)"
  echo "veths=$(ip -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1 | tr '\n' ' ')"
  for dir in /var/lib/cni /var/log/containers /run/containerd; do
    [ -e "$dir" ] || echo "created_dir=$dir"
  done
} >"$NODE/host-before.env"
iptables_chains >"$NODE/iptables-before.txt"
echo 1 >/proc/sys/net/ipv4/ip_forward
echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables

# --- pod network: the bridge exists before the first pod, so CoreDNS and kubelet can bind its address -------------
ip link add "$BRIDGE" type bridge
ip addr add "$NODE_IP/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
# Service addresses are never routed off the machine (kube-proxy rewrites them; anything else stays on the bridge).
ip route add "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"
for plugin in bridge host-local loopback; do ln -sf "/usr/lib/cni/$plugin" "$NODE/cni/bin/$plugin"; done
cat >"$NODE/cni/net.d/10-clothing-model.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$NODE/cni/ipam"
      }
    }
  ]
}
EOF

# --- cgroups: everything of the node under one parent, removed by cluster-down.sh -------------------------------
for hierarchy in /sys/fs/cgroup/*/; do
  [ -f "$hierarchy/cgroup.procs" ] || continue
  mkdir -p "$hierarchy$CGROUP_PARENT"
  if [ -f "$hierarchy/cpuset.cpus" ]; then
    cat "$hierarchy/cpuset.cpus" >"$hierarchy$CGROUP_PARENT/cpuset.cpus"
    cat "$hierarchy/cpuset.mems" >"$hierarchy$CGROUP_PARENT/cpuset.mems"
  fi
done

# --- containerd -------------------------------------------------------------------------------------------------
cat >"$NODE/containerd/config.toml" <<EOF
version = 2
root = "$NODE/containerd/root"
state = "$RUN/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$CONTAINERD_SOCKET"
[ttrpc]
  address = "$RUN/containerd-ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  # Never below containerd's own OOM score: lowering it needs CAP_SYS_RESOURCE, which some VMs (these CI ones)
  # drop even for root; otherwise runc fails every pod sandbox (kubelet asks -998 for it) with "failed to update
  # /proc/self/oom_score_adj: Permission denied" / "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
        Root = "$RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$NODE/cni/bin"
    conf_dir = "$NODE/cni/net.d"
    max_conf_num = 1
EOF
start_daemon containerd containerd --config "$NODE/containerd/config.toml"
wait_for 60 containerd ctr --address "$CONTAINERD_SOCKET" version
bash "$ROOT/tools/cluster/images.sh" --import >/dev/null
stage "containerd up, images imported"

# --- kubelet ------------------------------------------------------------------------------------------------------
pki="$STATE/pki"
openssl req -newkey rsa:2048 -nodes -subj "/O=system:nodes/CN=system:node:$NODE_NAME" \
  -keyout "$NODE/pki/kubelet-client.key" -out "$NODE/pki/kubelet-client.csr" 2>/dev/null
openssl x509 -req -in "$NODE/pki/kubelet-client.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 2 \
  -out "$NODE/pki/kubelet-client.crt" 2>/dev/null
server="$(kubectl config view --kubeconfig "$KUBECONFIG_FILE" -o jsonpath='{.clusters[0].cluster.server}')"
kubectl config set-cluster local --kubeconfig "$NODE/kubelet.kubeconfig" --server "$server" \
  --certificate-authority "$pki/ca.crt" --embed-certs >/dev/null
kubectl config set-credentials kubelet --kubeconfig "$NODE/kubelet.kubeconfig" \
  --client-certificate "$NODE/pki/kubelet-client.crt" --client-key "$NODE/pki/kubelet-client.key" --embed-certs >/dev/null
kubectl config set-context local --kubeconfig "$NODE/kubelet.kubeconfig" --cluster local --user kubelet >/dev/null
kubectl config use-context local --kubeconfig "$NODE/kubelet.kubeconfig" >/dev/null
: >"$NODE/resolv.conf"  # pods get the cluster DNS only: no host search domains, no upstream resolvers
cat >"$NODE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_PARENT
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCKET
imageServiceEndpoint: unix://$CONTAINERD_SOCKET
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
resolvConf: $NODE/resolv.conf
podLogsDir: $NODE/pod-logs
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: AlwaysAllow}
# A shared test machine: no image garbage collection, evictions only when really short.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
maxPods: 40
serializeImagePulls: false
syncFrequency: 10s
EOF
start_daemon kubelet kubelet --config "$NODE/kubelet.yaml" --kubeconfig "$NODE/kubelet.kubeconfig" \
  --root-dir "$NODE/kubelet" --cert-dir "$NODE/pki" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v=1

# --- kube-proxy -----------------------------------------------------------------------------------------------
cat >"$NODE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $KUBECONFIG_FILE}
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
clusterCIDR: $POD_CIDR
detectLocalMode: ClusterCIDR
healthzBindAddress: 127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$KUBE_PROXY_METRICS_PORT
nodePortAddresses: [$NODE_IP/32]
# Leave the host's conntrack sysctls as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {syncPeriod: 30s, minSyncPeriod: 1s, localhostNodePorts: false}
EOF
start_daemon kube-proxy kube-proxy --config "$NODE/kube-proxy.yaml" --v=1

# --- CoreDNS ----------------------------------------------------------------------------------------------------
# No upstream (forward) on purpose: pods resolve cluster names only and send no traffic off this machine.
cat >"$NODE/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    ready 127.0.0.1:$COREDNS_READY_PORT
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $KUBECONFIG_FILE local
        pods insecure
        ttl 5
    }
    cache 5
}
EOF
start_daemon coredns coredns -conf "$NODE/Corefile"

wait_for 120 "node $NODE_NAME Ready" kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=5s
# NetworkPolicies: kube-router's firewall only, once the node exists (it finds its pods by the node's name).
start_daemon kube-router kube-router --kubeconfig "$KUBECONFIG_FILE" --hostname-override "$NODE_NAME" \
  --run-firewall=true --run-router=false --run-service-proxy=false --enable-cni=false \
  --service-cluster-ip-range "$SERVICE_CIDR" --health-port "$KUBE_ROUTER_HEALTH_PORT" --metrics-port 0 --v=1
wait_for 60 "kube-proxy" curl -sf "http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/healthz"
wait_for 60 "CoreDNS" curl -sf "http://127.0.0.1:$COREDNS_READY_PORT/ready"
wait_for 60 "kube-router" curl -sf "http://127.0.0.1:$KUBE_ROUTER_HEALTH_PORT/healthz"
wait_for 60 "kube-router's NetworkPolicy chains" iptables -S KUBE-ROUTER-FORWARD

# --- metrics-server: kubelets' resource metrics as metrics.k8s.io, for HPAs ----------------------------------------
# The API server proxies to the Service's endpoint (the node's address; aggregator routing) as front-proxy-client.
start_daemon metrics-server metrics-server --kubeconfig "$KUBECONFIG_FILE" \
  --authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
  --bind-address "$NODE_IP" --secure-port "$METRICS_SERVER_PORT" --cert-dir "$NODE/pki/metrics-server" \
  --kubelet-insecure-tls --kubelet-preferred-address-types InternalIP --metric-resolution 15s
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system}
spec:
  ports: [{name: https, port: 443, targetPort: $METRICS_SERVER_PORT}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: metrics-server
  namespace: kube-system
  labels: {kubernetes.io/service-name: metrics-server, endpointslice.kubernetes.io/managed-by: clothing-model-cluster-up}
addressType: IPv4
endpoints: [{addresses: ["$NODE_IP"], conditions: {ready: true}}]
ports: [{name: https, port: $METRICS_SERVER_PORT, protocol: TCP}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io}
spec:
  service: {name: metrics-server, namespace: kube-system, port: 443}
  group: metrics.k8s.io
  version: v1beta1
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 100
  versionPriority: 100
EOF
wait_for 120 "the metrics API (metrics-server)" kubectl get --raw "/apis/metrics.k8s.io/v1beta1/nodes/$NODE_NAME"
stage "node $NODE_NAME Ready, kube-proxy, CoreDNS, kube-router's NetworkPolicies and metrics-server serving"
log "cluster up: export KUBECONFIG=$KUBECONFIG_FILE"
