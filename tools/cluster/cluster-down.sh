#!/usr/bin/env bash
# Stops the local cluster of cluster-up.sh and removes everything it made: pods (their network is torn down by the
# runtime), CoreDNS, kube-router (its NetworkPolicy chains and ipsets), kube-proxy (and its iptables rules:
# `kube-proxy --cleanup`), kubelet, containerd, the shims
# and any container process left (found through the node's own cgroup parent), every mount under the node's
# directories, network namespaces, veths, the bridge and its route, iptables chains the cluster added, cgroups,
# host settings it changed, then the control plane (apiserver-down.sh). Works after a crash too. Verifies the
# result and exits non-zero, listing what remains, if anything does.
#   --quiet   no verification report (used by cluster-up.sh before a fresh start)
source "$(dirname "$0")/cluster-env.sh"
quiet=false; [ "${1:-}" = --quiet ] && quiet=true
[ "$(id -u)" = 0 ] || die "cluster-down needs root"

stop_daemon() { [ -f "$NODE/pids/$1" ] && stop_pid "$(cat "$NODE/pids/$1")"; rm -f "$NODE/pids/$1"; }

veths_before="$(grep -s '^veths=' "$NODE/host-before.env" | cut -d= -f2 || true)"

# 1. Pods first, through the API, so the runtime tears their networks down the normal way.
if [ -d "$NODE" ] && alive kubelet && kubectl get --raw /readyz >/dev/null 2>&1; then
  for ns in $(kubectl get ns -o jsonpath='{.items[*].metadata.name}'); do
    kubectl -n "$ns" delete deployments,replicasets,statefulsets,daemonsets,jobs --all --wait=false >/dev/null 2>&1 || true
    kubectl -n "$ns" delete pods --all --grace-period=1 --wait=false >/dev/null 2>&1 || true
  done
  for _ in $(seq 60); do
    [ -z "$(ip -o link show master "$BRIDGE" 2>/dev/null)" ] && break
    sleep 1
  done
fi

# 2. The node's processes.
stop_daemon prometheus
stop_daemon kserve-manager
stop_daemon metrics-server
stop_daemon coredns
stop_daemon kube-router
stop_daemon kube-proxy
stop_daemon kubelet
# Whatever still runs in a pod cgroup (a crashed kubelet leaves containers behind).
cgroup_pids() { { find /sys/fs/cgroup/*/"$CGROUP_PARENT" -name cgroup.procs -exec cat {} + 2>/dev/null || true; } | sort -u; }
for _ in 1 2 3; do
  pids="$(cgroup_pids)"
  [ -n "$pids" ] || break
  # shellcheck disable=SC2086
  kill -9 $pids 2>/dev/null || true
  sleep 0.5
done
# The runc shims of our containerd (matched by its socket address, so nothing else's).
for proc in /proc/[0-9]*; do
  if tr '\0' ' ' 2>/dev/null <"$proc/cmdline" | grep -q -- "-address $CONTAINERD_SOCKET "; then
    kill -9 "${proc#/proc/}" 2>/dev/null || true
  fi
done
stop_daemon containerd

# 3. iptables: kube-proxy's own cleanup, then any chain the cluster added (kubelet's, CNI's) compared to before.
if [ -x "$TOOLS_BIN/kube-proxy" ] && [ -f "$NODE/iptables-before.txt" ]; then
  kube-proxy --cleanup --v=0 >/dev/null 2>&1 || true
  new_chains() { iptables_chains | { grep -vxF -f "$NODE/iptables-before.txt" || true; } | { grep -E ' (KUBE-|CNI-)' || true; }; }
  jumps_to() { # CHAIN: "PARENT NUMBER" of every rule jumping to it, highest number first (deleting keeps the others')
    awk -v c="$1" '$1 == "-A" { n[$2]++; for (i = 3; i < NF; i++) if ($i == "-j" && $(i + 1) == c && $2 != c) print $2, n[$2] }' \
      | sort -k2,2nr
  }
  new_chains | while read -r family table chain; do
    # Rules that jump to the chain (by number: a rule with a quoted comment cannot be re-typed), then the chain.
    "$family" -t "$table" -S | jumps_to "$chain" | while read -r parent number; do
      "$family" -t "$table" -D "$parent" "$number" 2>/dev/null || true
    done
    "$family" -t "$table" -F "$chain" 2>/dev/null || true
  done
  new_chains | while read -r family table chain; do
    "$family" -t "$table" -X "$chain" 2>/dev/null || true
  done
fi

# 3b. kube-router's ipsets (its iptables chains, KUBE-*, went above; a set is destroyed once no rule uses it).
router_sets() { { ipset list -n 2>/dev/null || true; } | { grep -E '^(KUBE-(SRC|DST)-|kube-router-)' || true; }; }
for set in $(router_sets); do ipset destroy "$set" 2>/dev/null || true; done

# 4. Mounts under the node's directories (overlay rootfs, shm, netns, volumes): deepest first.
our_mounts() { findmnt -rn -o TARGET | { grep -E "^($NODE|$RUN)(/|$)" || true; } | sort -r; }
for _ in 1 2 3; do
  mounts="$(our_mounts)"
  [ -n "$mounts" ] || break
  while read -r target; do umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || true; done <<<"$mounts"
done

# 5. Network: veths on the bridge (a pod's veth goes with its namespace, but a crash may leave one), the bridge
#    (its route goes with it), CNI's result cache of this network.
for veth in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
  ip link del "$veth" 2>/dev/null || true
done
ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
rm -f /var/lib/cni/results/"$CNI_NETWORK"-* 2>/dev/null || true

# 6. cgroups, deepest first.
for hierarchy in /sys/fs/cgroup/*/; do
  [ -d "$hierarchy$CGROUP_PARENT" ] && find "$hierarchy$CGROUP_PARENT" -depth -type d -exec rmdir {} + 2>/dev/null || true
done

# 7. Host settings and directories the cluster created.
if [ -f "$NODE/host-before.env" ]; then
  while IFS='=' read -r key value; do
    case $key in
      ip_forward) echo "$value" >/proc/sys/net/ipv4/ip_forward ;;
      bridge_nf_call_iptables) echo "$value" >/proc/sys/net/bridge/bridge-nf-call-iptables ;;
    esac
  done <"$NODE/host-before.env"
  find /var/log/containers -maxdepth 1 -lname "$NODE/*" -delete 2>/dev/null || true
  { grep '^created_dir=' "$NODE/host-before.env" || true; } | cut -d= -f2 | while read -r dir; do
    find "$dir" -depth -type d -empty -delete 2>/dev/null || true
  done
fi

# 8. State, unless a mount survived (never delete through a mount).
if [ -n "$(our_mounts)" ]; then
  echo "still mounted:" >&2; our_mounts >&2
  die "mounts remain under $NODE or $RUN; not removing them"
fi
rm -rf "$NODE" "$RUN"
out="$(bash "$ROOT/tools/cluster/apiserver-down.sh" 2>&1)" || die "apiserver-down.sh failed: $out"

# 9. Verify.
$quiet && exit 0
problems=()
for proc in /proc/[0-9]*; do
  cmd="$(tr '\0' ' ' 2>/dev/null <"$proc/cmdline")" || continue
  case $cmd in
    *"$NODE"* | *"$RUN"* | *"$STATE"*) problems+=("process ${proc#/proc/}: $cmd") ;;
  esac
done
[ -z "$(findmnt -rn -o TARGET | grep -E "^($NODE|$RUN|$STATE)(/|$)")" ] || problems+=("mounts remain")
ip link show "$BRIDGE" >/dev/null 2>&1 && problems+=("bridge $BRIDGE remains")
new_veths=""
for veth in $(ip -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1); do
  case " $veths_before " in *" $veth "*) ;; *) new_veths+="$veth " ;; esac
done
[ -z "$new_veths" ] || problems+=("veths remain: $new_veths")
ip route show | grep -q "${SERVICE_CIDR%/*}" && problems+=("route to $SERVICE_CIDR remains")
leftover_chains="$(iptables_chains | { grep -E ' (KUBE-|CNI-)' || true; })"
[ -z "$leftover_chains" ] || problems+=("iptables chains remain: $(echo "$leftover_chains" | tr '\n' ';')")
[ -z "$(router_sets)" ] || problems+=("ipsets remain: $(router_sets | tr '\n' ' ')")
ls -d /sys/fs/cgroup/*/"$CGROUP_PARENT" >/dev/null 2>&1 && problems+=("cgroups remain under /sys/fs/cgroup/*/$CGROUP_PARENT")
[ -e "$NODE" ] || [ -e "$RUN" ] || [ -e "$STATE" ] && problems+=("state directories remain")
if [ ${#problems[@]} -gt 0 ]; then
  printf 'left behind: %s\n' "${problems[@]}" >&2
  die "cluster-down did not leave the machine clean"
fi
log "cluster stopped: no process, mount, netns, veth, bridge, route, iptables chain, ipset, cgroup or state left"
