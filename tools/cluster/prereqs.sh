#!/usr/bin/env bash
# The local cluster's machine prerequisites: installs the Debian packages it runs on (containerd, runc, the CNI
# plugins, conntrack, iptables; umoci, skopeo, debootstrap, buildah, busybox-static for the images) when missing, and checks the kernel
# features it needs. Fails loudly, with the reason, when one is missing: it never skips.
source "$(dirname "$0")/../lib.sh"

[ "$(id -u)" = 0 ] || die "the local cluster needs root (containerd, kubelet, CNI and iptables): run as root"

# --- Debian packages ---------------------------------------------------------------------------------------
missing=()
for pkg in $CLUSTER_DEBS; do
  dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "apt-get is needed to install ${missing[*]}"
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The suite fixes the versions; report any that differ from the ones this setup was tested with.
for pin in $CLUSTER_DEBS_TESTED; do
  pkg=${pin%%=*} want=${pin#*=}
  have="$(dpkg-query -W -f '${Version}' "$pkg")"
  [ "$have" = "$want" ] || log "note: $pkg is $have (tested with $want)"
done

# --- kernel --------------------------------------------------------------------------------------------------
modprobe -q overlay 2>/dev/null || true
modprobe -q br_netfilter 2>/dev/null || true
grep -qw overlay /proc/filesystems || die "the kernel has no overlay filesystem (containerd's overlayfs snapshotter)"
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  grep -qw memory /sys/fs/cgroup/cgroup.controllers || die "cgroup v2 without the memory controller"
else
  for controller in cpu cpuacct cpuset memory pids; do
    [ -d "/sys/fs/cgroup/$controller" ] || die "cgroup v1 controller '$controller' is not mounted at /sys/fs/cgroup/$controller"
  done
fi
[ -f /proc/sys/net/bridge/bridge-nf-call-iptables ] \
  || die "br_netfilter is missing (no /proc/sys/net/bridge): Service traffic between pods on one bridge would bypass kube-proxy"
# net.ipv4.ip_forward and net.bridge.bridge-nf-call-iptables are set by cluster-up.sh (and restored by cluster-down.sh).
iptables -t nat -S >/dev/null 2>&1 || die "iptables cannot use the nat table (kube-proxy needs it): $(iptables -t nat -S 2>&1 | tail -1)"
[ "$(cat /proc/swaps | wc -l)" -le 1 ] || log "note: swap is on; kubelet runs with failSwapOn=false"
for cmd in containerd runc ctr conntrack ip; do
  command -v "$cmd" >/dev/null || die "$cmd is missing after installing $CLUSTER_DEBS"
done
for plugin in bridge host-local loopback; do
  [ -x "/usr/lib/cni/$plugin" ] || die "CNI plugin /usr/lib/cni/$plugin is missing (containernetworking-plugins)"
done
