#!/usr/bin/env bash
# The default pipeline's stages themselves on a lent GPU (benchmarks/gpu_stages.py runs dvc.yaml's DAG there without
# DVC): `model.device: auto` resolves to cuda, so every stage runs as `make demo` runs it, MLflow tracking included.
# What it shows: that the stage code runs on CUDA end to end (a tensor left on the CPU fails here, not in a user's
# cluster job), and what each stage costs there. benchmarks/gpu_check.sh times single steps on large shapes.
#
#   bash benchmarks/gpu_stages.sh --fetch-wheels       # on the dev machine, once: MLflow & co. and the resolved DAG
#                                                      # -> .whl-stages/ (~48 MB)
#   bash benchmarks/gpu_stages.sh [gpu_stages.py args] # on the device machine, with .whl-stages carried
#
# Written: $OUT/gpu_stages.json (see gpu_stages.py) and $OUT/gpu_stages_logs.tgz; copy the JSON into
# benchmarks/results/. The stages' outputs overwrite the working tree's metrics/ there, never here.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl-stages
. benchmarks/device_wheels.sh

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  # MLflow, pydantic and transformers at requirements.lock's pins, with their needs, for the device's CPython 3.12
  # (x86-64); the packages its image already holds (/work/.library/device/KINDS.md, read 2026-11-17) are dropped,
  # typing_extensions kept as gpu_check.sh does (pydantic wants a recent one). transformers because the image's 5.17
  # predates the `cache` field of the model outputs that GCG's prefix cache reads (5.24's name for past_key_values):
  # there the r2d2 stage failed with "'CausalLMOutputWithPast' object has no attribute 'cache'". ~50 MB: with the
  # tracked tree (~13 MB), near the 64 MB a call carries.
  pins=$(grep -iE '^(mlflow|mlflow-skinny|mlflow-tracing|pydantic|transformers)==' requirements.lock)
  image="aiohappyeyeballs aiohttp aiosignal annotated_doc anyio attrs certifi charset_normalizer click cloudpickle
    contourpy cycler filelock fonttools frozenlist fsspec h11 hf_xet httpcore httpx huggingface_hub idna jinja2 joblib
    kiwisolver markdown_it_py markupsafe matplotlib mdurl multidict narwhals numpy packaging pandas pillow propcache
    protobuf pyarrow pygments pyparsing python_dateutil pyyaml regex requests rich safetensors scikit_learn scipy
    shellingham six threadpoolctl tokenizers tqdm typer urllib3 werkzeug yarl zipp"
  # shellcheck disable=SC2086
  fetch_wheels "$WHEELS" $pins || exit 1
  for name in $image; do rm -f "$WHEELS/$name"-[0-9]*.whl; done
  PY=python3; [[ -x .venv/bin/python ]] && PY=.venv/bin/python
  "$PY" benchmarks/gpu_stages.py --write-dag "$WHEELS/dag.json" || exit 1
  du -sh "$WHEELS"
  exit 0
fi

PY=${PYTHON:-python3}
pinned=$(grep -iE '^transformers==' requirements.lock | cut -d= -f3)
if ! "$PY" -c "import mlflow, pydantic, transformers; assert transformers.__version__ == '$pinned'" 2>/dev/null; then
  use_wheels "$PY" "$WHEELS" || { echo "no $WHEELS/: run 'bash $0 --fetch-wheels' and carry it" >&2; exit 1; }
fi
export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}
set -a; . src/latlab/offline.env; set +a
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 LATLAB_GIT_COMMIT=${LATLAB_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null)}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import transformers, torch; print("transformers", transformers.__version__, "torch", torch.__version__)'
"$PY" benchmarks/gpu_stages.py --dag "$WHEELS/dag.json" "$@"
rc=$?
[[ -n "${OUT:-}" && -d logs/gpu_stages ]] && tar czf "$OUT/gpu_stages_logs.tgz" logs/gpu_stages
exit $rc
