#!/usr/bin/env bash
# Builds the local cluster's OCI images without Docker or a registry, as oci-archive files cached outside the
# clone and keyed by the hash of their inputs (a warm run rebuilds nothing). The two images users build come from
# their shipped Dockerfiles, built by buildah; the public bases those Dockerfiles start FROM cannot be pulled here,
# so local stand-ins built first take their place through the Dockerfiles' base-image build arguments:
#   localhost/clothing-model-python:dev      stands in for python:3.11-slim-bookworm: Debian (debootstrap, minbase)
#                                            + python3 and venv, `python` on PATH, the machine's CA certificates
#   localhost/clothing-model-tf-serving:dev  stands in for tensorflow/serving: the python base + model-tools'
#                                            TF-Serving-compatible server installed as /usr/bin/tensorflow_model_server
#                                            (TF Serving's flags) and TF Serving's own entrypoint script
#   localhost/clothing-model-gateway:dev     images/gateway/Dockerfile, FROM the python base
#   localhost/clothing-model-server:dev      images/tf-serving/Dockerfile (the committed model), FROM the stand-in
#   localhost/clothing-model-pause:dev       the pod sandbox: a static Go program of ours (tools/cluster/pause)
#   localhost/clothing-model-busybox:dev     stands in for busybox:1.37.0-musl (the chart's model-image copier):
#                                            Debian's statically linked busybox as /bin/busybox, /bin/cp
#   localhost/model-clothing-model-v1:dev, localhost/model-clothing-model-v2:dev,
#   localhost/model-clothing-model-exact-v1:dev  model images built from `model-tools image` build contexts for the
#                                            many-models e2e: the committed model as version 1, again as version 2,
#                                            and as a second model, clothing-model-exact (served with exact
#                                            preprocessing)
# Every image runs as a numeric non-root user and works with a read-only root filesystem (/tmp writable).
#
#   bash tools/cluster/images.sh            build (or reuse) the archives; prints `NAME=ARCHIVE` lines
#   bash tools/cluster/images.sh --import   also import them into the local cluster's containerd (k8s.io namespace)
#   ... --model-image NAME=DIR              also localhost/NAME:dev: the server image serving the SavedModel versions
#                                           in DIR as clothing-model instead of the committed model
# Needs root (debootstrap, umoci unpack, buildah), the Debian packages debootstrap, umoci, skopeo, buildah,
# busybox-static (tools/cluster/prereqs.sh) and model-tools in .venv (make python-env). The gateway's Dockerfile installs its locked wheels from the package index, so its
# build needs the network, as a user's `docker build` does.
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
for tool in debootstrap umoci skopeo buildah busybox; do
  command -v "$tool" >/dev/null || die "$tool is missing: run tools/cluster/prereqs.sh (apt-get install $tool)"
done

hash_files() { # PATH...: one hash over the contents and repository-relative names of the files (sorted), this
  # script included, bytecode caches excluded: the same in every clone
  (cd "$ROOT" && find "${@#"$ROOT"/}" tools/cluster/images.sh -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/clothing-model-images.XXXXXX")"
# buildah keeps its store under WORK too (nothing left behind).
BUILDAH_STORE=(--root "$WORK/buildah/root" --runroot "$WORK/buildah/run" --storage-driver overlay)
trap 'buildah "${BUILDAH_STORE[@]}" rm --all >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

# --- the Debian root filesystem of the python base ----------------------------------------------------------
# The Debian mirror this machine's apt already uses (DEBIAN_MIRROR overrides it).
if [ -z "${DEBIAN_MIRROR:-}" ]; then
  DEBIAN_MIRROR="$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)"
  [ -n "$DEBIAN_MIRROR" ] || DEBIAN_MIRROR="$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)"
  [ -n "$DEBIAN_MIRROR" ] || die "no Debian mirror found in apt's sources; set DEBIAN_MIRROR"
fi
BASE_PACKAGES="python3,python3-venv,libstdc++6,ca-certificates"
ROOTFS_RECIPE=2  # bump when the recipe below changes
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
  ln -sf python3 "$rootfs/usr/bin/python"  # as the official image: `python` is the interpreter
  : >"$rootfs/etc/resolv.conf"
  : >"$rootfs/etc/hostname"
  tar -C "$rootfs" --numeric-owner -cf "$ROOTFS_TAR.tmp" .
  mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
  find "$IMAGES_DIR" -maxdepth 1 -name "rootfs-$DEBIAN_SUITE-*.tar" ! -name "$(basename "$ROOTFS_TAR")" -delete
  log "rootfs built in $((SECONDS - start)) s ($(du -h "$ROOTFS_TAR" | cut -f1))"
fi

# --- OCI images ----------------------------------------------------------------------------------------------
declare -A ARCHIVES

cached() { # NAME KEY: records localhost/NAME:dev's archive; true when it is already built
  ARCHIVES[$1]="$IMAGES_DIR/$1-$2.tar"
  [ -f "${ARCHIVES[$1]}" ] && return 0
  log "building localhost/$1:dev"
  return 1
}

built() { # NAME START SOURCE: SOURCE (an image reference) saved as NAME's archive; older archives of NAME removed
  local name=$1 start=$2 source=$3 archive="${ARCHIVES[$1]}"
  rm -f "$archive.tmp"
  skopeo copy --quiet "$source" "oci-archive:$archive.tmp:localhost/$name:dev"
  mv "$archive.tmp" "$archive"
  find "$IMAGES_DIR" -maxdepth 1 -name "$name-*.tar" ! -name "$(basename "$archive")" -delete
  log "built localhost/$name:dev in $((SECONDS - start)) s ($(du -h "$archive" | cut -f1))"
}

# build_image NAME FROM KEY FILL_FUNCTION UMOCI_CONFIG_ARGS...: a stand-in built with umoci. FROM is "scratch" or
# the name of an image built before: its layers are reused and one layer is added.
build_image() {
  local name=$1 from=$2 key=$3 fill=$4; shift 4
  cached "$name" "$key" && return 0
  local start=$SECONDS layout="$WORK/$name-layout" bundle="$WORK/$name-bundle"
  if [ "$from" = scratch ]; then
    umoci init --layout "$layout"
    umoci new --image "$layout:dev"
  else
    skopeo copy --quiet "oci-archive:${ARCHIVES[$from]}" "oci:$layout:dev"
  fi
  umoci unpack --image "$layout:dev" "$bundle" >/dev/null
  "$fill" "$bundle/rootfs"
  # One history entry, naming what made the layer (the Dockerfile builds on top add theirs).
  umoci repack --image "$layout:dev" --history.created_by "tools/cluster/images.sh $fill" "$bundle"
  umoci config --image "$layout:dev" --no-history --os linux --architecture amd64 "$@"
  umoci gc --layout "$layout"
  built "$name" "$start" "oci:$layout:dev"
  rm -rf "$layout" "$bundle"
}

# build_dockerfile NAME KEY DOCKERFILE BASE BUILD_ARG...: localhost/NAME:dev built from a shipped Dockerfile with
# the repository root as the context (its .dockerignore applies), FROM the stand-in BASE (an image built before,
# named by the Dockerfile's base-image build args among BUILD_ARG). --layers: one layer per instruction, as Docker;
# RUN steps in a chroot on the host's network.
build_dockerfile() {
  local name=$1 key=$2 dockerfile=$3 base=$4; shift 4
  cached "$name" "$key" && return 0
  local start=$SECONDS arg build_args=()
  for arg in "$@"; do build_args+=(--build-arg "$arg"); done
  buildah "${BUILDAH_STORE[@]}" pull --quiet "oci-archive:${ARCHIVES[$base]}" >/dev/null
  buildah "${BUILDAH_STORE[@]}" bud --quiet --pull=never --layers --isolation chroot --network host \
    --platform linux/amd64 -f "$ROOT/$dockerfile" "${build_args[@]}" -t "localhost/$name:dev" "$ROOT" \
    >"$WORK/$name-build.log" 2>&1 || { tail -40 "$WORK/$name-build.log" >&2; die "building $dockerfile failed"; }
  built "$name" "$start" "containers-storage:[overlay@$WORK/buildah/root+$WORK/buildah/run]localhost/$name:dev"
}

fill_pause() {
  (cd "$ROOT/tools/cluster/pause" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$1/pause" .)
}

fill_python() {
  local rootfs=$1
  tar -C "$rootfs" -xf "$ROOTFS_TAR"
  # The machine's CA certificates (its package index may sit behind a TLS-inspecting proxy): the gateway's
  # Dockerfile runs pip against it. Debian's pip uses this bundle.
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
}

STAND_IN=/opt/tf-serving-stand-in
fill_tf_serving() {
  local rootfs=$1
  "$TOOLS_BIN/uv" pip install --quiet --target "$rootfs$STAND_IN" --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 --only-binary :all: --no-deps --require-hashes \
    -r "$ROOT/model-tools/requirements.lock"
  rm -rf "$rootfs$STAND_IN/bin"  # console scripts with this machine's interpreter in their shebang
  cp -r "$ROOT/model-interface/src/model_interface" "$ROOT/model-tools/src/model_tools" "$rootfs$STAND_IN/"
  find "$rootfs$STAND_IN" -name __pycache__ -prune -exec rm -rf {} +
  # Compiled now with the image's own interpreter: TF Serving's images run with read-only root filesystems.
  chroot "$rootfs" /usr/bin/python3 -m compileall -q -j 0 "$STAND_IN" >/dev/null
  printf '#!/bin/sh\n# model-tools'"'"' TF-Serving-compatible stand-in under TF Serving'"'"'s name (local test base only).\nPYTHONPATH=%s PYTHONDONTWRITEBYTECODE=1 exec python3 -m model_tools.server "$@"\n' \
    "$STAND_IN" >"$rootfs/usr/bin/tensorflow_model_server"
  # The stock image's entrypoint script, as tensorflow/serving ships it.
  printf '#!/bin/bash\n\ntensorflow_model_server --port=8500 --rest_api_port=8501 --model_name=${MODEL_NAME} --model_base_path=${MODEL_BASE_PATH}/${MODEL_NAME} "$@"\n' \
    >"$rootfs/usr/bin/tf_serving_entrypoint.sh"
  chmod 0755 "$rootfs/usr/bin/tensorflow_model_server" "$rootfs/usr/bin/tf_serving_entrypoint.sh"
  chmod -R a+rX "$rootfs$STAND_IN"
}

pause_key="$(hash_files "$ROOT/tools/cluster/pause")"
build_image clothing-model-pause scratch "$pause_key" fill_pause \
  --config.entrypoint /pause --config.user 65535:65535

python_key="$base_key-$(cat "$ROOT/tools/cluster/images.sh" /etc/ssl/certs/ca-certificates.crt | sha256sum | cut -c1-8)"
build_image clothing-model-python scratch "$python_key" fill_python \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --config.env LANG=C.UTF-8 \
  --config.cmd python3

tf_serving_key="${python_key:0:8}-$(hash_files \
  "$ROOT/model-tools/requirements.lock" "$ROOT/model-tools/src" "$ROOT/model-interface/src")"
build_image clothing-model-tf-serving clothing-model-python "$tf_serving_key" fill_tf_serving \
  --config.env MODEL_NAME=model --config.env MODEL_BASE_PATH=/models --config.exposedports 8500/tcp \
  --config.exposedports 8501/tcp --config.entrypoint /usr/bin/tf_serving_entrypoint.sh

gateway_key="${python_key:0:8}-$(hash_files "$ROOT/.dockerignore" "$ROOT/images/gateway" "$ROOT/model-interface/src")"
build_dockerfile clothing-model-gateway "$gateway_key" images/gateway/Dockerfile clothing-model-python \
  PYTHON_IMAGE=localhost/clothing-model-python:dev

# MODEL_SOURCE is passed although it is the default: buildah 1.28 resolves a FROM naming an earlier stage through a
# build arg only when the arg is given (containers/buildah#4312).
server_key="${tf_serving_key:0:8}-$(hash_files "$ROOT/.dockerignore" "$ROOT/images/tf-serving" \
  "$ROOT/model-tools/models/clothing-model")"
build_dockerfile clothing-model-server "$server_key" images/tf-serving/Dockerfile clothing-model-tf-serving \
  TF_SERVING_IMAGE=localhost/clothing-model-tf-serving TF_SERVING_TAG=dev MODEL_SOURCE=dir

# add_layer NAME FROM KEY SOURCE TARGET [--opaque]: the archive for localhost/NAME:dev, unless cached: FROM's archive
# plus one layer holding the directory SOURCE at TARGET (merged with what FROM has there, or replacing it with
# --opaque). `umoci insert` neither unpacks nor repacks FROM's layers (the server's are 700 MB).
add_layer() {
  local name=$1 from=$2 key=$3 source=$4 target=$5 opaque=${6:-}
  cached "$name" "$key" && return 0
  local start=$SECONDS layout="$WORK/$name-layout"
  chmod -R a+rX "$source"
  skopeo copy --quiet "oci-archive:${ARCHIVES[$from]}" "oci:$layout:dev"
  umoci insert --image "$layout:dev" ${opaque:+"$opaque"} "$source" "$target"
  built "$name" "$start" "oci:$layout:dev"
  rm -rf "$layout"
}

fill_busybox() {
  mkdir -p "$1/bin"
  cp "$(command -v busybox)" "$1/bin/busybox"
  ln -s busybox "$1/bin/cp"
}
busybox_key="$(dpkg-query -W -f '${Version}' busybox-static | sha256sum | cut -c1-8)-$(hash_files "$ROOT/tools/versions.env")"
build_image clothing-model-busybox scratch "$busybox_key" fill_busybox --config.user 65534:65534

# model_image NAME MODEL_IMAGE_ARGS...: localhost/NAME:dev built from the build context `model-tools image` writes
# for the committed model (FROM scratch: nothing to pull).
model_image() {
  local name=$1; shift
  local key
  key="$(hash_files "$ROOT/model-tools/models/clothing-model" "$ROOT/model-tools/src/model_tools/image.py" | cut -c1-8)"
  cached "$name" "$key-$(echo "$*" | sha256sum | cut -c1-8)" && return 0
  local start=$SECONDS context="$WORK/$name"
  "$ROOT/.venv/bin/model-tools" image "$ROOT/model-tools/models/clothing-model" --out "$context" "$@" >/dev/null
  buildah "${BUILDAH_STORE[@]}" bud --quiet --isolation chroot --platform linux/amd64 -t "localhost/$name:dev" \
    "$context" >"$WORK/$name-build.log" 2>&1 || { tail -20 "$WORK/$name-build.log" >&2; die "building $name failed"; }
  built "$name" "$start" "containers-storage:[overlay@$WORK/buildah/root+$WORK/buildah/run]localhost/$name:dev"
}
model_image model-clothing-model-v1
model_image model-clothing-model-v2 --version 2
model_image model-clothing-model-exact-v1 --name clothing-model-exact

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
