# Shared settings for tools/*.sh: sourced, not run.
# shellcheck shell=bash
set -Eeuo pipefail
# A command that fails under `set -e` says which one it was, so no script ends with a bare exit status. Subshells
# (command substitutions, pipeline stages) stay quiet: a failure that matters reaches the main shell's status.
trap 'err_rc=$?; [ "$BASH_SUBSHELL" != 0 ] || printf "error: %s line %s: \"%s\" exited %s\n" "${BASH_SOURCE[0]}" "$LINENO" "$BASH_COMMAND" "$err_rc" >&2' ERR

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=versions.env
source "$ROOT/tools/versions.env"

# Caches outlive a clone: a second run on the same machine rebuilds nothing.
CACHE_DIR="${CLOTHING_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/clothing-model}"
TOOLS_BIN="$ROOT/.tools/bin"
export GOCACHE="$CACHE_DIR/go/build"
export GOMODCACHE="$CACHE_DIR/go/mod"
export GOFLAGS="-mod=mod"
export UV_CACHE_DIR="$CACHE_DIR/uv"
mkdir -p "$CACHE_DIR" "$TOOLS_BIN"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# version_ge A B: true when dotted version A >= B.
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }

# --- the Go tools module (tools/go): one go.mod and go.sum for every Go-built tool --------------------------------
TOOLS_MODULE="$ROOT/tools/go"

tools_module_key() { # a hash of the module's files: a changed version or main package rebuilds
  (cd "$TOOLS_MODULE" && find . -type f \( -name go.mod -o -name go.sum -o -name '*.go' \) -print0 | LC_ALL=C sort -z \
    | xargs -0 sha256sum | sha256sum | cut -c1-12)
}

tools_module_version() { # MODULE: its version in the tools module's build list
  (cd "$TOOLS_MODULE" && GOFLAGS=-mod=readonly go list -m -f '{{.Version}}' "$1")
}

tools_module_dir() { # MODULE: its source directory in the module cache (downloaded if needed)
  (cd "$TOOLS_MODULE" && GOFLAGS=-mod=readonly go mod download -json "$1" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
}

go_module_dir() { # MODULE VERSION: a module outside the tools module, in the module cache (downloaded if needed)
  (cd "$CACHE_DIR" && go mod download -json "$1@$2" | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
}

# go_tool NAME PACKAGE [LDFLAGS] [TAGS]: `go build` of PACKAGE in the tools module (tools/go), cached by the hash of
# the module's files.
go_tool() {
  local name=$1 package=$2 ldflags=${3:-} tags=${4:-}
  local out="$CACHE_DIR/bin/$name-$(tools_module_key)"
  mkdir -p "$CACHE_DIR/bin"
  if [ ! -x "$out" ]; then
    log "building $name (go build $package in tools/go${tags:+, tags $tags})"
    local start=$SECONDS
    (cd "$TOOLS_MODULE" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -tags "$tags" \
      -ldflags "-s -w $ldflags" -o "$out.tmp" "$package")
    mv "$out.tmp" "$out"
    find "$CACHE_DIR/bin" -maxdepth 1 -name "$name-????????????" ! -name "$(basename "$out")" -delete  # older builds
    log "built $name in $((SECONDS - start)) s"
  fi
  ln -sf "$out" "$TOOLS_BIN/$name"
}

