#!/bin/sh
# The stock image's entrypoint runs the server under bash without exec, so SIGTERM never reaches it
# (tensorflow/serving#1853). This one execs it: the server is PID 1 and gets the signal. Extra arguments are
# appended, and TF Serving lets the last duplicate flag win.
exec tensorflow_model_server \
  --port=8500 \
  --rest_api_port=8501 \
  --model_name="${MODEL_NAME}" \
  --model_base_path="${MODEL_BASE_PATH}/${MODEL_NAME}" \
  --enable_batching \
  --batching_parameters_file=/etc/tf-serving/batching.config \
  --monitoring_config_file=/etc/tf-serving/monitoring.config \
  --enable_grpc_healthcheck_service \
  "$@"
