# Shared settings of the local single-node cluster (cluster-up.sh, cluster-down.sh, e2e.sh): sourced, not run.
# shellcheck shell=bash
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
export PATH="$TOOLS_BIN:$PATH"

STATE="$ROOT/.tools/cluster"             # the control plane's (apiserver-up.sh)
KUBECONFIG_FILE="$STATE/kubeconfig"
export KUBECONFIG="$KUBECONFIG_FILE"
NODE="$ROOT/.tools/node"                 # the node's: containerd root, kubelet root, CNI, logs, pids
RUN=/run/clothing-model                  # runtime state and sockets (short paths: unix socket names are limited)
CONTAINERD_SOCKET="$RUN/containerd.sock"
NODE_NAME=clothing-node
BRIDGE=cmbr0
CNI_NETWORK=clothing-model
POD_CIDR=10.244.0.0/24
NODE_IP=10.244.0.1                       # the bridge's address: node IP, NodePorts, cluster DNS
SERVICE_CIDR=10.96.0.0/16                # as apiserver-up.sh's --service-cluster-ip-range
CGROUP_PARENT=clothing-model             # cgroupRoot: every pod's cgroup lives below it
PAUSE_IMAGE=localhost/clothing-model-pause:dev
KUBELET_HEALTHZ_PORT=10248
KUBE_PROXY_HEALTHZ_PORT=10256
KUBE_PROXY_METRICS_PORT=10249
COREDNS_READY_PORT=18181
KUBE_ROUTER_HEALTH_PORT=20244
METRICS_SERVER_PORT=20443               # on NODE_IP: the API server reaches it through its Service's endpoints
PROMETHEUS_PORT=29090                   # on loopback: the e2e's Prometheus (rung 4c)
KSERVE_WEBHOOK_PORT=29443               # the KServe controller's webhooks (kserve-up.sh), called on loopback
KSERVE_HEALTH_PORT=29081                # its health probes, on loopback

stop_pid() { # PID: SIGTERM, up to 10 s, then SIGKILL
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}

alive() { [ -f "$NODE/pids/$1" ] && kill -0 "$(cat "$NODE/pids/$1")" 2>/dev/null; }

node_healthy() {
  alive containerd && alive kubelet && alive kube-proxy && alive coredns && alive kube-router && alive metrics-server \
    && kubectl get --raw /readyz >/dev/null 2>&1 \
    && [ "$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

start_daemon() { # NAME COMMAND ARGS...: runs in its own session, logs to $NODE/logs/NAME.log, pid in $NODE/pids
  local name=$1; shift
  setsid "$@" >"$NODE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$NODE/pids/$name"
}

wait_for() { # SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      for f in "$NODE"/logs/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -15 "$f" >&2; }; done
      die "timed out waiting for $what"
    fi
    sleep 1
  done
}

iptables_chains() { # every chain of every table, IPv4 and IPv6: "family table chain"
  local family table
  for family in iptables ip6tables; do
    command -v "$family" >/dev/null || continue
    for table in filter nat mangle raw; do
      "$family" -t "$table" -S 2>/dev/null | awk -v f="$family" -v t="$table" '$1 == "-N" || $1 == "-P" {print f, t, $2}'
    done
  done
}
