#!/usr/bin/env bash
# Builds the node's host daemons from their Go modules at the pinned tags (`go install`, no replace directives
# needed), once per version: cached outside the clone and linked into .tools/bin.
#   coredns       the cluster DNS
#   kube-router   its network policy controller only (--run-firewall): enforces NetworkPolicies with iptables and
#                 ipsets (kube-network-policies, the one kind ships, needs nftables' `queue` expression, which this
#                 machine's kernel lacks)
source "$(dirname "$0")/../lib.sh"

build() { # NAME PACKAGE VERSION
  local name=$1 package=$2 version=$3
  local out="$CACHE_DIR/bin/$name-$version" tmp start
  if [ ! -x "$out" ]; then
    command -v go >/dev/null || die "Go >= $GO_MIN is required to build $name"
    log "building $name $version (go install; a few minutes cold on 2 cores)"
    start=$SECONDS
    tmp="$(mktemp -d)"
    CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -ldflags "-s -w" "$package@$version"
    mkdir -p "$CACHE_DIR/bin"
    mv "$tmp/$name" "$out"
    rm -rf "$tmp"
    find "$CACHE_DIR/bin" -maxdepth 1 -name "$name-*" ! -name "$(basename "$out")" -delete  # older builds
    log "built $name in $((SECONDS - start)) s"
  fi
  ln -sf "$out" "$TOOLS_BIN/$name"
}

build coredns github.com/coredns/coredns "$COREDNS_VERSION"
build kube-router github.com/cloudnativelabs/kube-router/v2/cmd/kube-router "$KUBE_ROUTER_VERSION"
