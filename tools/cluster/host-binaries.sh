#!/usr/bin/env bash
# Builds the node's host daemons, cached outside the clone and linked into .tools/bin:
#   coredns       the cluster DNS: tools/go/coredns, CoreDNS with only the plugins the Corefile uses, in the Go tools
#                 module (it shares k8s.io's client with helm 4 and promtool: compiled once)
#   kube-router   its network policy controller only (--run-firewall): enforces NetworkPolicies with iptables and
#                 ipsets (kube-network-policies, the one kind ships, needs nftables' `queue` expression, which this
#                 machine's kernel lacks). `go install` at KUBE_ROUTER_VERSION, outside the tools module: its
#                 Kubernetes client is years older and it needs a docker client API newer go-connections removed.
source "$(dirname "$0")/../lib.sh"

command -v go >/dev/null || die "Go >= $GO_MIN is required to build the test cluster's host daemons"
go_tool coredns ./coredns

out="$CACHE_DIR/bin/kube-router-$KUBE_ROUTER_VERSION"
if [ ! -x "$out" ]; then
  log "building kube-router $KUBE_ROUTER_VERSION (go install; a few minutes cold on 2 cores)"
  start=$SECONDS
  tmp="$(mktemp -d)"
  CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -ldflags "-s -w" \
    "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION"
  mv "$tmp/kube-router" "$out"
  rm -rf "$tmp"
  find "$CACHE_DIR/bin" -maxdepth 1 -name "kube-router-*" ! -name "$(basename "$out")" -delete  # older builds
  log "built kube-router in $((SECONDS - start)) s"
fi
ln -sf "$out" "$TOOLS_BIN/kube-router"
