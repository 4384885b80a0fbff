#!/bin/sh
# The stock image's entrypoint runs the server under bash without exec, so SIGTERM never reaches it
# (tensorflow/serving#1853). This one execs it, so the server is PID 1. The container's args (the image's CMD:
# batching, monitoring, gRPC health; or the chart's args, which replace it) are appended, and TF Serving lets the
# last duplicate flag win.
exec tensorflow_model_server \
  --port=8500 \
  --rest_api_port=8501 \
  --model_name="${MODEL_NAME}" \
  --model_base_path="${MODEL_BASE_PATH}/${MODEL_NAME}" \
  "$@"
