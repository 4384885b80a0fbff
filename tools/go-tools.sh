#!/usr/bin/env bash
# Builds the chart tools of the Go tools module (tools/go: versions and go.sum) from the module proxy into a cache
# keyed by the module's hash, and links them into .tools/bin. A warm cache rebuilds nothing; a cold 2-core machine
# compiles what the tools share once.
source "$(dirname "$0")/lib.sh"

command -v go >/dev/null || die "Go >= $GO_MIN is required (not found on PATH); install it from https://go.dev/dl/"
go_version="$(go env GOVERSION | sed 's/^go//')"
version_ge "$go_version" "$GO_MIN" || die "Go >= $GO_MIN is required, found $go_version"

helm_ldflags() { # MAJOR
  local v=$1 version minor
  version="$(tools_module_version "helm.sh/helm/$v")"
  local flags="-X helm.sh/helm/$v/internal/version.version=$version -X helm.sh/helm/$v/internal/version.gitTreeState=clean"
  if [ "$v" = v3 ]; then
    # Without these, a `go build` helm v3 reports KubeVersion 1.20 (helm's Makefile sets them from client-go's minor).
    minor="$(tools_module_version k8s.io/client-go | cut -d. -f2)"
    flags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
    flags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
  fi
  printf '%s' "$flags"
}

# helm 4 first: the rest reuse most of what it compiles.
go_tool helm4 helm.sh/helm/v4/cmd/helm "$(helm_ldflags v4)"
go_tool helm helm.sh/helm/v3/cmd/helm "$(helm_ldflags v3)"
go_tool ct github.com/helm/chart-testing/v3/ct \
  "-X github.com/helm/chart-testing/v3/ct/cmd.Version=$(tools_module_version github.com/helm/chart-testing/v3)"
go_tool helm-docs github.com/norwoodj/helm-docs/cmd/helm-docs \
  "-X main.version=$(tools_module_version github.com/norwoodj/helm-docs)"
unittest_version="$(tools_module_version github.com/helm-unittest/helm-unittest)"
go_tool untt github.com/helm-unittest/helm-unittest/cmd/helm-unittest \
  "-X github.com/helm-unittest/helm-unittest/internal/build.version=${unittest_version#v}"
# values.schema.json is generated from values.yaml's `# @schema` annotations.
go_tool helm-values-schema-json github.com/losisin/helm-values-schema-json/v2 \
  "-X main.Version=$(tools_module_version github.com/losisin/helm-values-schema-json/v2)"
# Prometheus' service discovery reduced to Kubernetes' (the e2e's Prometheus configuration is checked with it).
go_tool promtool github.com/prometheus/prometheus/cmd/promtool "" remove_all_sd,enable_kubernetes_sd
go_tool pss-check ./pss-check

# ct reads chart_schema.yaml and lintconf.yaml from CT_CONFIG_DIR: they ship in its module's etc/.
ct_dir="$(tools_module_dir github.com/helm/chart-testing/v3)"
mkdir -p "$ROOT/.tools/ct"
cp -f "$ct_dir/etc/chart_schema.yaml" "$ROOT/.tools/ct/chart_schema.yaml"

# helm-unittest as a project-local plugin: plugin.yaml + our binary; its install hook (a download) never runs.
plugin_dir="$ROOT/.tools/helm-plugins/unittest"
unittest_dir="$(tools_module_dir github.com/helm-unittest/helm-unittest)"
mkdir -p "$plugin_dir"
sed '/^platformHooks:/,$d' "$unittest_dir/plugin.yaml" >"$plugin_dir/plugin.yaml"
ln -sf "$CACHE_DIR/bin/untt-$(tools_module_key)" "$plugin_dir/untt-linux-amd64"
ln -sf "$CACHE_DIR/bin/untt-$(tools_module_key)" "$plugin_dir/untt-linux-arm64"
log "go tools ready in $TOOLS_BIN"
