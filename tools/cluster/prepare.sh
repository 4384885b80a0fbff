#!/usr/bin/env bash
# Everything the local cluster needs besides the Kubernetes build (tools/cluster/build.sh), cached: the machine's
# prerequisites (prereqs.sh), the host daemons (host-binaries.sh: CoreDNS, kube-router) and the images (images.sh).
# The daemons' Go builds (CPU) overlap the images' build (mostly downloads and disk) when both are cold. cluster-up.sh
# runs it; CI runs it in the background, at the lowest priority, while the tests run.
source "$(dirname "$0")/../lib.sh"

bash "$ROOT/tools/cluster/prereqs.sh"
bash "$ROOT/tools/cluster/host-binaries.sh" &
host_binaries=$!
bash "$ROOT/tools/cluster/images.sh" >/dev/null
wait "$host_binaries" || die "building CoreDNS or kube-router failed"
