#!/usr/bin/env bash
# The default pipeline's stages themselves on a lent GPU: `model.device: auto` resolves to cuda, so base, the refusal
# track (RT, targeted / untargeted LAT, RT-EAT, R2D2), two unlearning entries and evaluate run there unchanged, with
# MLflow tracking as in `make demo`. What it shows: that the stage code runs on CUDA end to end (a tensor left on the
# CPU fails here, not in a user's cluster job), and what each stage costs there. benchmarks/gpu_check.sh times
# single steps on large shapes; this runs the real stages on the toy default.
#
#   bash benchmarks/gpu_stages.sh --fetch-wheels   # on the dev machine, once: MLflow & co. for the device -> .whl-stages/
#   bash benchmarks/gpu_stages.sh [BUDGET_S]       # on the device machine, with .whl-stages carried (default 400 s)
#
# No DVC there (the device image lacks it, and the 64 MB carry limit rules out its tree): the stages run in this
# script's fixed order, independent ones side by side, each under what is left of BUDGET_S; a stage whose parent
# failed or ran out of time is skipped. Written: $OUT/gpu_stages.json (per stage: exit status, seconds, the log's tail
# on a failure; the metrics files the run wrote) and $OUT/gpu_stages_logs.tgz; copy the JSON into
# benchmarks/results/. The stages' outputs overwrite the working tree's metrics/ there, never here.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl-stages

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
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  # shellcheck disable=SC2086
  python3 -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$WHEELS" $pins || exit 1
  for name in $image; do rm -f "$WHEELS/$name"-[0-9]*.whl; done
  grep -qxF "/$WHEELS/" .git/info/exclude 2>/dev/null || echo "/$WHEELS/" >> .git/info/exclude
  du -sh "$WHEELS"
  exit 0
fi

BUDGET=${1:-400}
PY=${PYTHON:-python3}
if ! "$PY" -c 'import mlflow, pydantic' 2>/dev/null; then
  compgen -G "$WHEELS/*.whl" >/dev/null || { echo "no $WHEELS/: run 'bash $0 --fetch-wheels' and carry it" >&2; exit 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/latlab-site \
    "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/latlab-site
fi
export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}
set -a; . src/latlab/offline.env; set +a
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 LATLAB_GIT_COMMIT=${LATLAB_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null)}
OUTDIR=${OUT:-/tmp/gpu_stages}
mkdir -p "$OUTDIR" logs/gpu_stages
STATUS=logs/gpu_stages/status.tsv
: > "$STATUS"
BEGAN=$(date +%s)
touch logs/gpu_stages/.began

# run NAME ARGS...: one stage command under what is left of the budget; NAME's status line goes to $STATUS
run() {
  local name=$1; shift
  local left=$((BEGAN + BUDGET - $(date +%s)))
  if ((left < 5)); then printf '%s\tskipped\t0\tno time left\n' "$name" >> "$STATUS"; return 1; fi
  local start; start=$(date +%s%N)
  timeout "$left" "$PY" -m "$@" > "logs/gpu_stages/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\t\n' "$name" "$rc" "$(( ($(date +%s%N) - start) / 1000000 ))" >> "$STATUS"
  echo "[$(( $(date +%s) - BEGAN )) s] $name: exit $rc" >&2
  return $rc
}
# after NAME...: true when every named stage finished with exit 0
after() { for s in "$@"; do awk -F'\t' -v s="$s" '$1 == s && $2 == "0" {f = 1} END {exit !f}' "$STATUS" || return 1; done; }
skip() { for s in "$@"; do printf '%s\tskipped\t0\ta parent failed\n' "$s" >> "$STATUS"; done; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee logs/gpu_stages/nvidia-smi.txt
run generate stages.generate
if after generate; then
  run base stages.base & run oracle stages.oracle & wait
else skip base oracle; fi
if after base; then
  run refusal stages.refusal & run unlearn.rmu stages.unlearn --method rmu &
  run unlearn.ga_lat stages.unlearn --method ga_lat & wait
else skip refusal unlearn.rmu unlearn.ga_lat; fi
if after refusal; then
  run lat stages.lat --section lat & run lat_untargeted stages.lat --section lat_untargeted &
  run rt_eat stages.lat --section rt_eat & run r2d2 stages.r2d2 & wait
else skip lat lat_untargeted rt_eat r2d2; fi
if after lat lat_untargeted rt_eat r2d2; then run evaluate stages.evaluate; else skip evaluate; fi

"$PY" - "$STATUS" "$OUTDIR/gpu_stages.json" "$BUDGET" <<'EOF'
import json, sys
from pathlib import Path

import torch

status, out, budget = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
began = Path("logs/gpu_stages/.began").stat().st_mtime
stages = {}
for line in status.read_text().splitlines():
    name, rc, ms, why = (line.split("\t") + [""])[:4]
    entry = {"exit": int(rc) if rc.lstrip("-").isdigit() else rc, "seconds": int(ms) / 1000}
    if why:
        entry["why"] = why
    log = Path(f"logs/gpu_stages/{name}.log")
    if entry["exit"] != 0 and log.exists():
        entry["log_tail"] = log.read_text(errors="replace").splitlines()[-25:]
    stages[name] = entry
metrics = {str(p): json.loads(p.read_text()) for p in sorted(Path("metrics").rglob("*.json"))
           if p.stat().st_mtime >= began}
result = {"device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
          "torch": torch.__version__, "budget_s": budget,
          "note": "stages side by side on one GPU as the script orders them: their seconds include contention",
          "stages": stages, "metrics": metrics}
out.write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps({k: {"exit": v["exit"], "seconds": v["seconds"]} for k, v in stages.items()}))
EOF
tar czf "$OUTDIR/gpu_stages_logs.tgz" logs/gpu_stages
awk -F'\t' '$2 != "0" {bad = 1} END {exit bad}' "$STATUS"
