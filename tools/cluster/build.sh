#!/usr/bin/env bash
# Builds the multi-call `kube` binary (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy, kubectl) from the wrapper module in tools/cluster/kube, once per version: the result is cached
# outside the clone, keyed by the wrapper's go.sum, and linked into .tools/bin under each component's name.
source "$(dirname "$0")/../lib.sh"

key="$(cat "$ROOT"/tools/cluster/kube/go.mod "$ROOT"/tools/cluster/kube/go.sum "$ROOT"/tools/cluster/kube/*.go | sha256sum | cut -c1-12)"
out="$CACHE_DIR/bin/kube-$KUBERNETES_VERSION-$key"
if [ ! -x "$out" ]; then
  command -v go >/dev/null || die "Go >= $GO_MIN is required to build the test cluster's binaries"
  minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
  log "building kube $KUBERNETES_VERSION + etcd $ETCD_VERSION (one go build; ~7 min cold on 2 cores)"
  start=$SECONDS
  (
    cd "$ROOT/tools/cluster/kube"
    CGO_ENABLED=0 go build -trimpath -o "$out.tmp" -ldflags "-s -w \
      -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION \
      -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
      -X k8s.io/component-base/version.gitTreeState=clean \
      -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION \
      -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor" .
  )
  mv "$out.tmp" "$out"
  find "$CACHE_DIR/bin" -maxdepth 1 -name 'kube-v*' ! -name "$(basename "$out")" -delete  # older builds
  log "built kube in $((SECONDS - start)) s"
fi
for name in kube etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
  ln -sf "$out" "$TOOLS_BIN/$name"
done
