#!/usr/bin/env bash
# Creates the project's Python environments from the lock files (idempotent; wheels cached outside the clone):
#   .venv          everything: gateway, model-tools (TensorFlow CPU), tests and linters (requirements/dev.lock)
#   .venv-gateway  the gateway runtime only, no TensorFlow (images/gateway/requirements.lock): the gateway's
#                  processes in tests and benchmarks run from here, as in its image
#   .venv-kserve-sdk  the KServe Python SDK (requirements/kserve-sdk.lock), whose protobuf pin conflicts with
#                  TensorFlow's: the e2e's KServe rung calls the transformer with its client
source "$(dirname "$0")/lib.sh"

command -v python3 >/dev/null || die "Python >= $PYTHON_MIN is required (python3 not found on PATH)"
py_version="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
version_ge "$py_version" "$PYTHON_MIN" || die "Python >= $PYTHON_MIN is required, found $py_version"
python3 -c 'import venv, ensurepip' 2>/dev/null || die "Python's venv/ensurepip modules are missing (Debian: apt-get install python3-venv)"

# uv, pinned, in its own environment in the cache.
UV="$CACHE_DIR/uv-$UV_VERSION/bin/uv"
if [ ! -x "$UV" ]; then
  log "installing uv $UV_VERSION"
  python3 -m venv "$CACHE_DIR/uv-$UV_VERSION"
  "$CACHE_DIR/uv-$UV_VERSION/bin/pip" install --quiet "uv==$UV_VERSION"
fi
ln -sf "$UV" "$TOOLS_BIN/uv"

# sync_env DIR LOCKFILE: create DIR if needed and make it exactly match LOCKFILE (hashes checked).
sync_env() {
  local dir=$1 lock=$2 stamp
  stamp="$dir/.lock-sha256"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(sha256sum "$lock" | cut -d' ' -f1)" ]; then
    return 0
  fi
  log "syncing $(basename "$dir") from ${lock#"$ROOT"/}"
  [ -x "$dir/bin/python" ] || "$UV" venv --quiet --python "$(command -v python3)" "$dir"
  VIRTUAL_ENV="$dir" "$UV" pip sync --quiet --require-hashes "$lock"
  sha256sum "$lock" | cut -d' ' -f1 >"$stamp"
}

sync_env "$ROOT/.venv" "$ROOT/requirements/dev.lock"
sync_env "$ROOT/.venv-gateway" "$ROOT/images/gateway/requirements.lock"
sync_env "$ROOT/.venv-kserve-sdk" "$ROOT/requirements/kserve-sdk.lock"

# The project's own packages, editable (no dependencies: those come from the locks above).
VIRTUAL_ENV="$ROOT/.venv" "$UV" pip install --quiet --no-deps \
  -e "$ROOT/model-interface" -e "$ROOT/images/gateway" -e "$ROOT/model-tools"
VIRTUAL_ENV="$ROOT/.venv-gateway" "$UV" pip install --quiet --no-deps -e "$ROOT/model-interface" -e "$ROOT/images/gateway"
log "python environments ready (.venv, .venv-gateway, .venv-kserve-sdk)"
