#!/usr/bin/env bash
# Builds the local cluster's OCI images without Docker or a registry, as oci-archive files cached outside the
# clone and keyed by the hash of their inputs (a warm run rebuilds nothing):
#   localhost/clothing-model-pause:dev    the pod sandbox: a static Go program of ours (tools/cluster/pause)
#   localhost/clothing-model-base:dev     Debian (debootstrap, minbase) + python3: the shared base layer
#   localhost/clothing-model-gateway:dev  base + images/gateway/requirements.lock + model_interface + clothing_gateway
#                                         (as its Dockerfile)
#   localhost/clothing-model-server:dev   base + model-tools/requirements.lock + model_interface + model_tools + the
#                                         committed model;
#                                         `tensorflow_model_server` runs `python -m model_tools.server` (TF Serving's
#                                         flags), behind the same entrypoint as images/tf-serving
#   localhost/clothing-model-server-rollout:dev  a test fixture for the many-models e2e: the server image plus the
#                                         committed model again as version 2 and as a second model,
#                                         clothing-model-exact (served with exact preprocessing)
# Every image runs as a numeric non-root user and works with a read-only root filesystem (/tmp writable).
#
#   bash tools/cluster/images.sh            build (or reuse) the archives; prints `NAME=ARCHIVE` lines
#   bash tools/cluster/images.sh --import   also import them into the local cluster's containerd (k8s.io namespace)
#   ... --model-image NAME=DIR              also localhost/NAME:dev: the server image serving the SavedModel versions
#                                           in DIR as clothing-model instead of the committed model
# Needs root (debootstrap, umoci unpack) and the Debian packages debootstrap, umoci, skopeo (tools/cluster/prereqs.sh).
source "$(dirname "$0")/../lib.sh"

IMPORT=false MODEL_IMAGES=()
while [ $# -gt 0 ]; do
  case $1 in
    --import) IMPORT=true ;;
    --model-image) MODEL_IMAGES+=("${2:?--model-image NAME=DIR}"); shift ;;
    *) die "usage: images.sh [--import] [--model-image NAME=DIR]..." ;;
  esac
  shift
done

IMAGES_DIR="$CACHE_DIR/images"
mkdir -p "$IMAGES_DIR"
[ "$(id -u)" = 0 ] || die "images.sh needs root (debootstrap and umoci unpack preserve file ownership)"
for tool in debootstrap umoci skopeo; do
  command -v "$tool" >/dev/null || die "$tool is missing: run tools/cluster/prereqs.sh (apt-get install $tool)"
done

hash_files() { # PATH...: one hash over the contents and repository-relative names of the files (sorted), this
  # script included, bytecode caches excluded: the same in every clone
  (cd "$ROOT" && find "${@#"$ROOT"/}" tools/cluster/images.sh -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/clothing-model-images.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# --- the Debian root filesystem (shared by the Python images) -----------------------------------------------
# The Debian mirror this machine's apt already uses (DEBIAN_MIRROR overrides it).
if [ -z "${DEBIAN_MIRROR:-}" ]; then
  DEBIAN_MIRROR="$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)"
  [ -n "$DEBIAN_MIRROR" ] || DEBIAN_MIRROR="$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)"
  [ -n "$DEBIAN_MIRROR" ] || die "no Debian mirror found in apt's sources; set DEBIAN_MIRROR"
fi
BASE_PACKAGES="python3,libstdc++6"
ROOTFS_RECIPE=1  # bump when the recipe below changes
base_key="$(printf '%s\n' "$DEBIAN_SUITE" "$DEBIAN_MIRROR" "$BASE_PACKAGES" "$ROOTFS_RECIPE" | sha256sum | cut -c1-16)"
ROOTFS_TAR="$IMAGES_DIR/rootfs-$DEBIAN_SUITE-$base_key.tar"
if [ ! -f "$ROOTFS_TAR" ]; then
  log "debootstrap $DEBIAN_SUITE (minbase + $BASE_PACKAGES) from $DEBIAN_MIRROR"
  start=$SECONDS
  rootfs="$WORK/rootfs"
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" \
    >"$WORK/debootstrap.log" 2>&1 || { tail -30 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
  # The package versions the image was built from, for the record (dpkg's database itself is kept).
  chroot "$rootfs" dpkg-query -W -f '${Package}=${Version}\n' >"$rootfs/etc/clothing-model-packages.txt"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/tmp/* "$rootfs"/root/.[!.]* 2>/dev/null || true
  # The numeric users of the images (names make tools like getpass work; files stay root-owned and read-only).
  echo 'app:x:10001:10001:clothing-model:/tmp:/usr/sbin/nologin' >>"$rootfs/etc/passwd"
  echo 'app:x:10001:' >>"$rootfs/etc/group"
  ln -sf python3 "$rootfs/usr/bin/python"  # the chart's test pods run `python -m clothing_gateway.smoke`
  : >"$rootfs/etc/resolv.conf"
  : >"$rootfs/etc/hostname"
  tar -C "$rootfs" --numeric-owner -cf "$ROOTFS_TAR.tmp" .
  mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
  find "$IMAGES_DIR" -maxdepth 1 -name "rootfs-$DEBIAN_SUITE-*.tar" ! -name "$(basename "$ROOTFS_TAR")" -delete
  log "rootfs built in $((SECONDS - start)) s ($(du -h "$ROOTFS_TAR" | cut -f1))"
fi

# --- OCI images ----------------------------------------------------------------------------------------------
# build_image NAME FROM KEY FILL_FUNCTION UMOCI_CONFIG_ARGS...: the archive for localhost/NAME:dev, unless cached.
# FROM is "scratch" or the name of an image built before: its layers are reused and one layer is added.
declare -A ARCHIVES
build_image() {
  local name=$1 from=$2 key=$3 fill=$4; shift 4
  local archive="$IMAGES_DIR/$name-$key.tar"
  ARCHIVES[$name]="$archive"
  [ -f "$archive" ] && return 0
  log "building localhost/$name:dev"
  local start=$SECONDS layout="$WORK/$name-layout" bundle="$WORK/$name-bundle"
  if [ "$from" = scratch ]; then
    umoci init --layout "$layout"
    umoci new --image "$layout:dev"
  else
    skopeo copy --quiet "oci-archive:${ARCHIVES[$from]}" "oci:$layout:dev"
  fi
  umoci unpack --image "$layout:dev" "$bundle" >/dev/null
  "$fill" "$bundle/rootfs"
  umoci repack --image "$layout:dev" "$bundle"
  umoci config --image "$layout:dev" --os linux --architecture amd64 "$@"
  umoci gc --layout "$layout"
  rm -f "$archive.tmp"
  skopeo copy --quiet "oci:$layout:dev" "oci-archive:$archive.tmp:localhost/$name:dev"
  mv "$archive.tmp" "$archive"
  rm -rf "$layout" "$bundle"
  find "$IMAGES_DIR" -maxdepth 1 -name "$name-*.tar" ! -name "$(basename "$archive")" -delete
  log "built localhost/$name:dev in $((SECONDS - start)) s ($(du -h "$archive" | cut -f1))"
}

ENV_COMMON=(--config.env PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  --config.env PYTHONPATH=/app:/opt/python --config.env PYTHONDONTWRITEBYTECODE=1 --config.env PYTHONUNBUFFERED=1
  --config.env HOME=/tmp --config.env LANG=C.UTF-8)

fill_pause() {
  (cd "$ROOT/tools/cluster/pause" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$1/pause" .)
}

fill_base() { tar -C "$1" -xf "$ROOTFS_TAR"; }

install_python() { # ROOTFS LOCK: the locked wheels into ROOTFS/opt/python, bytecode compiled
  local rootfs=$1 lock=$2
  "$TOOLS_BIN/uv" pip install --quiet --target "$rootfs/opt/python" --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 --only-binary :all: --no-deps --require-hashes -r "$lock"
  rm -rf "$rootfs/opt/python/bin"  # console scripts with this machine's interpreter in their shebang
}

compile_bytecode() { # ROOTFS DIR...: compiled now, as the filesystem is read-only at run time
  local rootfs=$1; shift
  local dir; for dir in "$@"; do
    # The image's own interpreter, run in a chroot, so the .pyc files match it exactly.
    chroot "$rootfs" /usr/bin/python3 -m compileall -q -j 0 "$dir" >/dev/null
  done
}

fill_gateway() {
  local rootfs=$1
  install_python "$rootfs" "$ROOT/images/gateway/requirements.lock"
  mkdir -p "$rootfs/app"
  cp "$ROOT/images/gateway/gunicorn.conf.py" "$rootfs/app/"
  cp -r "$ROOT/model-interface/src/model_interface" "$ROOT/images/gateway/src/clothing_gateway" "$rootfs/app/"
  find "$rootfs/app" -name __pycache__ -prune -exec rm -rf {} +
  compile_bytecode "$rootfs" /app /opt/python
}

fill_server() {
  local rootfs=$1
  install_python "$rootfs" "$ROOT/model-tools/requirements.lock"
  mkdir -p "$rootfs/app" "$rootfs/models" "$rootfs/etc/tf-serving"
  cp -r "$ROOT/model-interface/src/model_interface" "$ROOT/model-tools/src/model_tools" "$rootfs/app/"
  find "$rootfs/app" -name __pycache__ -prune -exec rm -rf {} +
  cp -r "$ROOT/model-tools/models/clothing-model" "$rootfs/models/"
  cp "$ROOT/images/tf-serving/batching.config" "$ROOT/images/tf-serving/monitoring.config" "$rootfs/etc/tf-serving/"
  # TF Serving's binary name, as the stand-in server: same flags, same behaviour the chart relies on.
  printf '#!/bin/sh\n# The TF-Serving-compatible stand-in (model-tools/src/model_tools/server.py), under TF Serving'"'"'s name.\nexec python3 -m model_tools.server "$@"\n' \
    >"$rootfs/usr/local/bin/tensorflow_model_server"
  install -m 0555 "$ROOT/images/tf-serving/entrypoint.sh" "$rootfs/usr/local/bin/clothing-model-entrypoint"
  chmod 0555 "$rootfs/usr/local/bin/tensorflow_model_server"
  chmod -R a+rX "$rootfs/models" "$rootfs/etc/tf-serving" "$rootfs/app" "$rootfs/opt/python"
  compile_bytecode "$rootfs" /app /opt/python
}

pause_key="$(hash_files "$ROOT/tools/cluster/pause")"
build_image clothing-model-pause scratch "$pause_key" fill_pause \
  --config.entrypoint /pause --config.user 65535:65535

build_image clothing-model-base scratch "$base_key-$(sha256sum <"$ROOT/tools/cluster/images.sh" | cut -c1-8)" fill_base "${ENV_COMMON[@]}" \
  --config.user 10001:10001 --config.workingdir /tmp  # no CMD: images built on it must not inherit one

gateway_key="${base_key:0:8}-$(hash_files \
  "$ROOT/images/gateway/requirements.lock" "$ROOT/images/gateway/gunicorn.conf.py" "$ROOT/images/gateway/src" \
  "$ROOT/model-interface/src")"
build_image clothing-model-gateway clothing-model-base "$gateway_key" fill_gateway "${ENV_COMMON[@]}" \
  --config.env PROMETHEUS_MULTIPROC_DIR=/tmp/gateway-metrics --config.user 10001:10001 --config.workingdir /app \
  --config.exposedports 9696/tcp --config.entrypoint python3 --config.entrypoint -m --config.entrypoint gunicorn \
  --config.entrypoint -c --config.entrypoint /app/gunicorn.conf.py

server_key="${base_key:0:8}-$(hash_files \
  "$ROOT/model-tools/requirements.lock" "$ROOT/model-tools/src" "$ROOT/model-interface/src" \
  "$ROOT/model-tools/models/clothing-model" "$ROOT/images/tf-serving")"
build_image clothing-model-server clothing-model-base "$server_key" fill_server "${ENV_COMMON[@]}" \
  --config.env MODEL_NAME=clothing-model --config.env MODEL_BASE_PATH=/models --config.user 10001:10001 \
  --config.workingdir /tmp --config.exposedports 8500/tcp --config.exposedports 8501/tcp \
  --config.entrypoint /usr/local/bin/clothing-model-entrypoint \
  --config.cmd --enable_batching --config.cmd --batching_parameters_file=/etc/tf-serving/batching.config \
  --config.cmd --monitoring_config_file=/etc/tf-serving/monitoring.config --config.cmd --enable_grpc_healthcheck_service

# add_layer NAME FROM KEY SOURCE TARGET [--opaque]: the archive for localhost/NAME:dev, unless cached: FROM's archive
# plus one layer holding the directory SOURCE at TARGET (merged with what FROM has there, or replacing it with
# --opaque). `umoci insert` neither unpacks nor repacks FROM's layers (the server's are 700 MB).
add_layer() {
  local name=$1 from=$2 key=$3 source=$4 target=$5 opaque=${6:-}
  local archive="$IMAGES_DIR/$name-$key.tar" layout="$WORK/$name-layout"
  ARCHIVES[$name]="$archive"
  [ -f "$archive" ] && return 0
  log "building localhost/$name:dev"
  local start=$SECONDS
  chmod -R a+rX "$source"
  skopeo copy --quiet "oci-archive:${ARCHIVES[$from]}" "oci:$layout:dev"
  umoci insert --image "$layout:dev" ${opaque:+"$opaque"} "$source" "$target"
  skopeo copy --quiet "oci:$layout:dev" "oci-archive:$archive.tmp:localhost/$name:dev"
  mv "$archive.tmp" "$archive"
  rm -rf "$layout"
  find "$IMAGES_DIR" -maxdepth 1 -name "$name-*.tar" ! -name "$(basename "$archive")" -delete
  log "built localhost/$name:dev in $((SECONDS - start)) s ($(du -h "$archive" | cut -f1))"
}

# The many-models fixture: the committed model again as version 2 and as a second model.
rollout_models="$WORK/rollout-models"
mkdir -p "$rollout_models/clothing-model" "$rollout_models/clothing-model-exact"
cp -r "$ROOT/model-tools/models/clothing-model/1" "$rollout_models/clothing-model/2"
cp -r "$ROOT/model-tools/models/clothing-model/1" "$rollout_models/clothing-model-exact/1"
add_layer clothing-model-server-rollout clothing-model-server "$server_key" "$rollout_models" /models

# --model-image NAME=DIR: the server image serving DIR (numeric version directories) as clothing-model, the way
# images/tf-serving/Dockerfile's MODEL_DIR does.
for spec in "${MODEL_IMAGES[@]}"; do
  name="${spec%%=*}" dir="${spec#*=}"
  [ -d "$dir" ] || die "--model-image $spec: no directory $dir"
  add_layer "$name" clothing-model-server "${server_key:0:8}-$(hash_files "$(cd "$dir" && pwd)")" "$dir" \
    /models/clothing-model --opaque
done

for name in "${!ARCHIVES[@]}"; do echo "$name=${ARCHIVES[$name]}"; done | sort

if [ "$IMPORT" = true ]; then
  sock="${CONTAINERD_SOCKET:-/run/clothing-model/containerd.sock}"
  [ -S "$sock" ] || die "no containerd at $sock: run tools/cluster/cluster-up.sh"
  for name in "${!ARCHIVES[@]}"; do
    archive="${ARCHIVES[$name]}"
    # Re-import only when the archive differs from what containerd has (the archive's name carries its key).
    if ctr --address "$sock" -n k8s.io images ls -q "labels.\"clothing-model/archive\"==$(basename "$archive")" | grep -q .; then
      continue
    fi
    start=$SECONDS
    ctr --address "$sock" -n k8s.io images import "$archive" >/dev/null
    ctr --address "$sock" -n k8s.io images label "localhost/$name:dev" "clothing-model/archive=$(basename "$archive")" >/dev/null
    log "imported localhost/$name:dev in $((SECONDS - start)) s"
  done
fi
