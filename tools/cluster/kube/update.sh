#!/usr/bin/env bash
# Re-pin the wrapper module to KUBERNETES_VERSION / ETCD_VERSION from tools/versions.env (needs the module proxy).
set -euo pipefail
cd "$(dirname "$0")"
source ../../versions.env
export GOFLAGS=-mod=mod
staging_version="v0.${KUBERNETES_VERSION#v1.}"
go mod edit -droprequire=k8s.io/kubernetes
go mod edit -require="k8s.io/kubernetes@$KUBERNETES_VERSION" -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
upstream="$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
go mod edit -json "$upstream" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    if r["New"]["Path"].startswith("./staging/"):
        print(r["Old"]["Path"])' | while read -r module; do
  go mod edit -replace="$module=$module@$staging_version"
done
go mod tidy
