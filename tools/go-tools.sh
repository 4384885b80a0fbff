#!/usr/bin/env bash
# Builds the pinned Go tools from the module proxy into a version-keyed cache and links them into .tools/bin.
# A warm cache rebuilds nothing; a cold 2-core machine builds everything.
source "$(dirname "$0")/lib.sh"

command -v go >/dev/null || die "Go >= $GO_MIN is required (not found on PATH); install it from https://go.dev/dl/"
go_version="$(go env GOVERSION | sed 's/^go//')"
version_ge "$go_version" "$GO_MIN" || die "Go >= $GO_MIN is required, found $go_version"

BIN_CACHE="$CACHE_DIR/bin"
mkdir -p "$BIN_CACHE"

# go_install NAME VERSION PACKAGE [LDFLAGS] [TAGS]: a plain `go install PACKAGE@VERSION` (with build tags TAGS).
go_install() {
  local name=$1 version=$2 package=$3 ldflags=${4:-} tags=${5:-}
  local out="$BIN_CACHE/$name-$version${tags:+-$tags}"
  if [ ! -x "$out" ]; then
    log "building $name $version (go install $package@$version${tags:+, tags $tags})"
    local start=$SECONDS gobin
    gobin="$(mktemp -d)"
    CGO_ENABLED=0 GOBIN="$gobin" GOFLAGS= go install -trimpath -tags "$tags" -ldflags "-s -w $ldflags" "$package@$version"
    mv "$gobin/$(basename "$package")" "$out"
    rm -rf "$gobin"
    log "built $name in $((SECONDS - start)) s"
  fi
  ln -sf "$out" "$TOOLS_BIN/$name"
}

# go_build_wrapped NAME MODULE VERSION PACKAGE [LDFLAGS]: for modules whose go.mod carries `replace`
# directives (plain `go install` refuses them): a throwaway wrapper module requires MODULE@VERSION, copies its
# replace directives and builds PACKAGE.
go_build_wrapped() {
  local name=$1 module=$2 version=$3 package=$4 ldflags=${5:-}
  local out="$BIN_CACHE/$name-$version"
  if [ ! -x "$out" ]; then
    log "building $name $version (wrapper module around $module@$version)"
    local start=$SECONDS wrap upstream_mod
    wrap="$(mktemp -d)"
    (
      cd "$wrap"
      go mod init "clothing-model.local/wrap/$name" >/dev/null 2>&1
      go mod edit -go="$(go env GOVERSION | sed 's/^go//')" -require="$module@$version"
      upstream_mod="$(go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
      go mod edit -json "$upstream_mod" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    old = r["Old"]["Path"] + ("@" + r["Old"]["Version"] if r["Old"].get("Version") else "")
    new = r["New"]["Path"] + ("@" + r["New"]["Version"] if r["New"].get("Version") else "")
    print(f"-replace={old}={new}")' | xargs -r go mod edit
      printf 'package tools\n\nimport _ "%s"\n' "$package" >tools.go
      go mod tidy >/dev/null 2>&1 || true
      CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ldflags" -o "$out" "$package"
    )
    rm -rf "$wrap"
    log "built $name in $((SECONDS - start)) s"
  fi
  ln -sf "$out" "$TOOLS_BIN/$name"
}

# go_build_module NAME DIR: a module of this repository (DIR holds go.mod, go.sum and main.go), cached by the hash of
# its files.
go_build_module() {
  local name=$1 dir=$ROOT/$2 key out
  key="$(cat "$dir"/go.mod "$dir"/go.sum "$dir"/*.go | sha256sum | cut -c1-12)"
  out="$BIN_CACHE/$name-$key"
  if [ ! -x "$out" ]; then
    log "building $name (go build in ${dir#"$ROOT"/})"
    local start=$SECONDS
    (cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out.tmp" .)
    mv "$out.tmp" "$out"
    log "built $name in $((SECONDS - start)) s"
  fi
  ln -sf "$out" "$TOOLS_BIN/$name"
}

helm_ldflags() { # MAJOR K8S_MINOR
  local v=$1 flags="-X helm.sh/helm/$1/internal/version.version=$2 -X helm.sh/helm/$1/internal/version.gitTreeState=clean"
  if [ "$v" = v3 ]; then
    # Without these, a `go install`ed helm v3 reports KubeVersion 1.20 (helm's Makefile sets them the same way).
    flags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$3"
    flags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$3"
  fi
  printf '%s' "$flags"
}

# The Kubernetes minor that helm v3 was built against = client-go's v0.<minor> in its go.mod.
helm3_k8s_minor() {
  local mod
  mod="$(GOFLAGS= go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$mod" | head -1
}

go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm "$(helm_ldflags v3 "$HELM_VERSION" "$(helm3_k8s_minor)")"
go_install helm4 "$HELM4_VERSION" helm.sh/helm/v4/cmd/helm "$(helm_ldflags v4 "$HELM4_VERSION")"
# ct's module list is refused by the proxy (403), which `go install pkg@version` reads for deprecations.
go_build_wrapped ct github.com/helm/chart-testing/v3 "$CT_VERSION" github.com/helm/chart-testing/v3/ct \
  "-X github.com/helm/chart-testing/v3/ct/cmd.Version=$CT_VERSION"
go_install helm-docs "$HELM_DOCS_VERSION" github.com/norwoodj/helm-docs/cmd/helm-docs \
  "-X main.version=$HELM_DOCS_VERSION"
go_build_wrapped untt "github.com/helm-unittest/helm-unittest" "$HELM_UNITTEST_VERSION" \
  github.com/helm-unittest/helm-unittest/cmd/helm-unittest \
  "-X github.com/helm-unittest/helm-unittest/internal/build.version=${HELM_UNITTEST_VERSION#v}"
# values.schema.json is generated from values.yaml's `# @schema` annotations; its module list is refused (403) too.
go_build_wrapped helm-values-schema-json github.com/losisin/helm-values-schema-json/v2 "$HELM_VALUES_SCHEMA_JSON_VERSION" \
  github.com/losisin/helm-values-schema-json/v2 "-X main.Version=$HELM_VALUES_SCHEMA_JSON_VERSION"
# Without Prometheus' service-discovery plugins (remove_all_sd): the rule checks and tests need none, and the build
# takes half the time.
go_install promtool "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/promtool "" remove_all_sd
go_build_module pss-check tools/pss-check

# ct reads chart_schema.yaml and lintconf.yaml from CT_CONFIG_DIR: they ship in its module's etc/.
ct_dir="$(GOFLAGS= go mod download -json "github.com/helm/chart-testing/v3@$CT_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
mkdir -p "$ROOT/.tools/ct"
cp -f "$ct_dir/etc/chart_schema.yaml" "$ROOT/.tools/ct/chart_schema.yaml"

# helm-unittest as a project-local plugin: plugin.yaml + our binary; its install hook (a download) never runs.
plugin_dir="$ROOT/.tools/helm-plugins/unittest"
unittest_dir="$(GOFLAGS= go mod download -json "github.com/helm-unittest/helm-unittest@$HELM_UNITTEST_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
mkdir -p "$plugin_dir"
sed '/^platformHooks:/,$d' "$unittest_dir/plugin.yaml" >"$plugin_dir/plugin.yaml"
ln -sf "$BIN_CACHE/untt-$HELM_UNITTEST_VERSION" "$plugin_dir/untt-linux-amd64"
ln -sf "$BIN_CACHE/untt-$HELM_UNITTEST_VERSION" "$plugin_dir/untt-linux-arm64"
log "go tools ready in $TOOLS_BIN"
