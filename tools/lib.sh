# Shared settings for tools/*.sh: sourced, not run.
# shellcheck shell=bash
set -euo pipefail

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
