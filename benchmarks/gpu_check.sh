#!/usr/bin/env bash
# The GPU check of issues 3 and 8 as one command (benchmarks/gpu_check.py says what it measures).
#
#   bash benchmarks/gpu_check.sh --fetch-wheels   # on the dev machine, once: pydantic & co. for the device -> .whl/
#   bash benchmarks/gpu_check.sh                  # on the device machine, with .whl carried (docs/real_models.md)
#   bash benchmarks/gpu_check.sh --smoke          # anywhere: shrunk models, under a minute on a CPU
#
# Other arguments go to benchmarks/gpu_check.py. Where $OUT names a folder (the device machine), the result files and
# the log are copied there as they are written, since only $OUT comes back from that machine.
set -uo pipefail
cd "$(dirname "$0")/.."

. benchmarks/device_wheels.sh

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  # The device image's Python (3.12, x86-64) has torch, transformers, peft, tokenizers and scikit-learn but not
  # pydantic, which latlab.config needs: bring it and its needs at requirements.lock's versions (~3 MB).
  pins=$(grep -iE '^(pydantic|pydantic_core|annotated-types|typing-inspection|typing_extensions)==' requirements.lock)
  # shellcheck disable=SC2086
  fetch_wheels .whl --no-deps $pins || exit 1
  ls -l .whl
  exit 0
fi

PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c 'import pydantic' 2>/dev/null && ! use_wheels "$PY" .whl; then
  echo "pydantic is missing for $PY: run 'bash benchmarks/gpu_check.sh --fetch-wheels' where pip reaches PyPI," \
       "then carry .whl" >&2
  exit 1
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
set -a; . src/latlab/offline.env; set +a
export PYTHONUNBUFFERED=1

args=("$@")
if [[ " $* " != *" --smoke "* && " $* " != *" --device"* ]]; then
  args+=(--device cuda)  # here a missing GPU is a failure to report, not a machine to skip
fi
log=/dev/null
if [[ -n "${OUT:-}" && -d "${OUT:-}" ]]; then
  args+=(--copy-to "$OUT")
  log=$OUT/gpu_check.log
fi
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$log"
fi
"$PY" benchmarks/gpu_check.py "${args[@]}" 2>&1 | tee -a "$log"
