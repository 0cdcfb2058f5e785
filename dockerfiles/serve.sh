#!/bin/bash
# Entrypoint of the model images. It starts tensorflow_model_server exactly as TF Serving's own entrypoint
# (/usr/bin/tf_serving_entrypoint.sh) does: --port=8500 --rest_api_port=8501 --model_name=$MODEL_NAME
# --model_base_path=$MODEL_BASE_PATH/$MODEL_NAME. Then come the flags baked in at build time
# (/config/server.flags), then any given to `docker run` (later flags win).
# It execs the server instead of running it as a child of bash: `docker stop`'s SIGTERM then reaches the server,
# which drains in-flight requests, and the container's main pid is the server's, whose CPU the bench reports.
set -euo pipefail
baked=()
if [[ -f /config/server.flags ]]; then
  mapfile -t baked < <(grep -v '^[[:space:]]*\(#\|$\)' /config/server.flags)
fi
exec tensorflow_model_server --port=8500 --rest_api_port=8501 --model_name="${MODEL_NAME}" \
  --model_base_path="${MODEL_BASE_PATH}/${MODEL_NAME}" "${baked[@]}" "$@"
