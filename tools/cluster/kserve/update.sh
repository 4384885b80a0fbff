#!/usr/bin/env bash
# Re-pin the wrapper module to KSERVE_VERSION from tools/versions.env (needs the module proxy): requires
# github.com/kserve/kserve at that version with the `replace` directives of its own go.mod, which a plain `go install`
# would ignore.
set -euo pipefail
cd "$(dirname "$0")"
source ../../versions.env
export GOFLAGS=-mod=mod
go mod edit -droprequire=github.com/kserve/kserve
go mod edit -require="github.com/kserve/kserve@$KSERVE_VERSION"
upstream="$(go mod download -json "github.com/kserve/kserve@$KSERVE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
go mod edit -json "$upstream" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    print(r["Old"]["Path"] + "=" + r["New"]["Path"] + "@" + r["New"]["Version"])' | while read -r replace; do
  go mod edit -replace="$replace"
done
go mod tidy
