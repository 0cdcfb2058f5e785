#!/bin/bash
# Entrypoint of the model images: TF Serving's own entrypoint (/usr/bin/tf_serving_entrypoint.sh, which
# passes --port=8500 --rest_api_port=8501 --model_name=$MODEL_NAME --model_base_path=$MODEL_BASE_PATH/$MODEL_NAME)
# with the flags baked in at build time, then any given to `docker run` (later flags win).
set -euo pipefail
baked=()
if [[ -f /config/server.flags ]]; then
  mapfile -t baked < <(grep -v '^[[:space:]]*\(#\|$\)' /config/server.flags)
fi
exec /usr/bin/tf_serving_entrypoint.sh "${baked[@]}" "$@"
