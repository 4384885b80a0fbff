#!/usr/bin/env bash
# Builds the node's host daemons, cached outside the clone and linked into .tools/bin:
#   coredns       the cluster DNS: tools/go/coredns, CoreDNS with only the plugins the Corefile uses, in the Go tools
#                 module (it shares k8s.io's client with helm 4 and promtool: compiled once)
#   kube-router   its network policy controller only (--run-firewall): enforces NetworkPolicies with iptables and
#                 ipsets (kube-network-policies, the one kind ships, needs nftables' `queue` expression, which this
#                 machine's kernel lacks). `go install` at KUBE_ROUTER_VERSION, outside the tools module: its
#                 Kubernetes client is years older and it needs a docker client API newer go-connections removed.
#   metrics-server  the resource metrics API (metrics.k8s.io) the HPAs read: `go install` at METRICS_SERVER_VERSION
#   prometheus    the e2e's Prometheus server: the tools module's (promtool's version), with Kubernetes discovery only
#   kserve-manager  KServe's controller (cmd/manager) for the e2e's KServe rung: `go build` in the wrapper module
#                 tools/cluster/kserve (KServe's own `replace` directives), at KSERVE_VERSION
source "$(dirname "$0")/../lib.sh"

command -v go >/dev/null || die "Go >= $GO_MIN is required to build the test cluster's host daemons"
go_tool coredns ./coredns
go_tool prometheus github.com/prometheus/prometheus/cmd/prometheus "" "remove_all_sd,enable_kubernetes_sd"

go_install() { # NAME PACKAGE VERSION: `go install` once per version into the cache, linked into .tools/bin
  local name=$1 package=$2 version=$3 out="$CACHE_DIR/bin/$1-$3" tmp start=$SECONDS
  if [ ! -x "$out" ]; then
    log "building $name $version (go install; a few minutes cold on 2 cores)"
    tmp="$(mktemp -d)"
    CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -ldflags "-s -w" "$package@$version"
    mv "$tmp/$name" "$out"
    rm -rf "$tmp"
    find "$CACHE_DIR/bin" -maxdepth 1 -name "$name-*" ! -name "$(basename "$out")" -delete  # older builds
    log "built $name in $((SECONDS - start)) s"
  fi
  ln -sf "$out" "$TOOLS_BIN/$name"
}
go_install kube-router github.com/cloudnativelabs/kube-router/v2/cmd/kube-router "$KUBE_ROUTER_VERSION"
go_install metrics-server sigs.k8s.io/metrics-server/cmd/metrics-server "$METRICS_SERVER_VERSION"

# KServe's controller, from its wrapper module, once per go.sum.
key="$(cat "$ROOT"/tools/cluster/kserve/go.mod "$ROOT"/tools/cluster/kserve/go.sum | sha256sum | cut -c1-12)"
out="$CACHE_DIR/bin/kserve-manager-$KSERVE_VERSION-$key"
if [ ! -x "$out" ]; then
  log "building kserve-manager $KSERVE_VERSION (go build in tools/cluster/kserve; ~4 min cold on 2 cores)"
  start=$SECONDS
  (cd "$ROOT/tools/cluster/kserve" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w" \
    -o "$out.tmp" github.com/kserve/kserve/cmd/manager)
  mv "$out.tmp" "$out"
  find "$CACHE_DIR/bin" -maxdepth 1 -name 'kserve-manager-*' ! -name "$(basename "$out")" -delete  # older builds
  log "built kserve-manager in $((SECONDS - start)) s"
fi
ln -sf "$out" "$TOOLS_BIN/kserve-manager"
