#!/usr/bin/env bash
# TF Serving's own integration test (tensorflow_serving/model_servers/tensorflow_model_server_test.py) run against
# model-tools' server put where the test expects TF Serving's binary, one test per process, as Bazel runs it.
#
#   tools/tf-serving-suite.sh [SERVING_CHECKOUT] [TEST_NAME ...]
#
# SERVING_CHECKOUT: a clone of github.com/tensorflow/serving (cloned at TF_SERVING_SUITE_COMMIT when absent). The
# test's client side (TensorFlow, tensorflow-serving-api, portpicker) is installed into a private venv; the server is
# this clone's `.venv/bin/model-tools serve` (run `make setup` first). Needs internet for the clone and the venv. Prints
# one line per test and the count passed; exits non-zero if a test outside OUT_OF_SCOPE failed.
source "$(dirname "$0")/lib.sh"

TF_SERVING_SUITE_COMMIT=9d981c5c
# TF Lite models, the profiler service and tf_text ops are not served by the stand-in (model-tools' README).
OUT_OF_SCOPE="testPredictOnTfLite testPredictWithSignatureDefOnTfLite test_profiler_service_with_valid_trace_request
test_tf_text"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
checkout=${1:-}
[ $# -gt 0 ] && shift
if [ -z "$checkout" ]; then
  checkout=$WORK/serving
  git clone -q https://github.com/tensorflow/serving "$checkout"
  git -C "$checkout" checkout -q "$TF_SERVING_SUITE_COMMIT"
fi
tests_py=$checkout/tensorflow_serving/model_servers/tensorflow_model_server_test.py
[ -f "$tests_py" ] || die "no $tests_py: pass a clone of github.com/tensorflow/serving"
[ -x "$ROOT/.venv/bin/model-tools" ] && [ -x "$TOOLS_BIN/uv" ] || die "no .venv/bin/model-tools: run make setup"

# The client side, pinned to the TensorFlow the stand-in runs.
tf_version=$("$ROOT/.venv/bin/python" -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null)
"$TOOLS_BIN/uv" venv -q --python "$PYTHON_MIN" "$WORK/venv"
VIRTUAL_ENV=$WORK/venv "$TOOLS_BIN/uv" pip install -q "tensorflow==$tf_version" "tensorflow-serving-api==$tf_version" \
  "tf-keras==$tf_version" portpicker==1.6.0 six==1.17.0
site=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
mkdir -p "$site/tensorflow_serving/model_servers"
touch "$site/tensorflow_serving/model_servers/__init__.py"
cp -r "$checkout/tensorflow_serving/model_servers/test_util" "$site/tensorflow_serving/model_servers/"
touch "$site/tensorflow_serving/model_servers/test_util/__init__.py"

# $TEST_SRCDIR as Bazel lays it out: the test data, and the stand-in as model_servers/tensorflow_model_server.
srcdir=$WORK/srcdir/tf_serving/tensorflow_serving
mkdir -p "$srcdir/model_servers"
ln -s "$checkout/tensorflow_serving/servables" "$srcdir/servables"
printf '#!/bin/sh\nexec %q serve "$@"\n' "$ROOT/.venv/bin/model-tools" >"$srcdir/model_servers/tensorflow_model_server"
chmod +x "$srcdir/model_servers/tensorflow_model_server"

if [ $# -eq 0 ]; then
  set -- $(grep -oE '^  def (test[A-Za-z0-9_]+)' "$tests_py" | awk '{print $2}')
fi
logs=${TF_SERVING_SUITE_LOGS:-$WORK/logs}
mkdir -p "$logs"
passed=0 failed_in_scope=0
for name in "$@"; do
  log=$logs/$name.log
  # TF Serving's Keras tests were written for tf.keras 2 (Keras 3 names a Sequential model's input "inputs").
  if (cd "$WORK" && TEST_SRCDIR=$WORK/srcdir TF_USE_LEGACY_KERAS=1 timeout 300 "$WORK/venv/bin/python" "$tests_py" \
      "TensorflowModelServerTest.$name" >"$log" 2>&1); then
    passed=$((passed + 1)); echo "PASS $name"
  elif grep -qw "$name" <<<"$OUT_OF_SCOPE"; then
    echo "FAIL $name (out of scope)"
  else
    failed_in_scope=$((failed_in_scope + 1)); echo "FAIL $name"; tail -n 15 "$log" | sed 's/^/    /'
  fi
done
echo "$passed of $# passed; $failed_in_scope failed in scope"
[ "$failed_in_scope" -eq 0 ]
