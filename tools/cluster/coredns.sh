#!/usr/bin/env bash
# Builds CoreDNS from its Go module at the pinned tag (`go install`, no replace directives needed), once per
# version: cached outside the clone and linked into .tools/bin/coredns.
source "$(dirname "$0")/../lib.sh"

out="$CACHE_DIR/bin/coredns-$COREDNS_VERSION"
if [ ! -x "$out" ]; then
  command -v go >/dev/null || die "Go >= $GO_MIN is required to build CoreDNS"
  log "building CoreDNS $COREDNS_VERSION (go install; a few minutes cold on 2 cores)"
  start=$SECONDS
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
  mkdir -p "$CACHE_DIR/bin"
  mv "$tmp/coredns" "$out"
  find "$CACHE_DIR/bin" -maxdepth 1 -name 'coredns-*' ! -name "$(basename "$out")" -delete  # older builds
  log "built CoreDNS in $((SECONDS - start)) s"
fi
ln -sf "$out" "$TOOLS_BIN/coredns"
