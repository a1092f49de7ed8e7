"""flows.study, the seed study: which params keys each seed changes (every training seed, not the data seeds), the
MLflow study tags, the headline summary over seeds, and the whole flow on a throwaway DVC repo whose one stage
writes metrics from its seed (no pipeline run). The study on the smoke profile end to end is the slow test below."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.study import DATA_SEEDS, seed_keys, seed_params
from latlab.config import parse_params
from latlab.report.seed_summary import evaluate_markdown, sample_size_key, summarize_seeds
from latlab.tracking import study_tags
from tests.settings import PARAMS_YAML, raw_params

REPO = Path(__file__).resolve().parents[1]
BOOTSTRAP = {"samples": 2000, "confidence": 0.95, "seed": 0}


def leaves(tree: dict, path: tuple = ()) -> dict[tuple, object]:
    out = {}
    for key, value in tree.items():
        out.update(leaves(value, (*path, key)) if isinstance(value, dict) else {(*path, key): value})
    return out


def test_seed_keys_find_every_seed_of_params_yaml():
    # counted in the text independently of the tree walk: integer `seed:` / `<x>_seed:` keys, less the study's own
    in_text = len(re.findall(r"(?<![\w])\w*seed: \d", PARAMS_YAML.read_text())) - 1  # study.bootstrap_seed
    found = seed_keys(raw_params())
    assert len(found) == in_text >= 30
    assert ("unlearn", "rmu", "direction_seed") in found and ("attacks", "gcg_universal", "seed") in found
    assert not [path for path in found if path[0] == "study"]


def test_a_study_seed_offsets_every_training_seed_and_keeps_the_data_fixed():
    raw = raw_params()
    before, after = leaves(raw), leaves(seed_params(raw, 3, vary_data_seed=False))
    changed = {path for path in before if before[path] != after[path]}
    assert changed == set(seed_keys(raw)) - set(DATA_SEEDS)
    assert all(after[path] == before[path] + 3 for path in changed)
    assert after[("seed",)] == raw["seed"] and after[("spawrious", "data", "seed")] == raw["spawrious"]["data"]["seed"]
    assert after[("study", "bootstrap_seed")] == raw["study"]["bootstrap_seed"]
    parse_params(seed_params(raw, 3, vary_data_seed=False), "seed 3")  # still valid params
    varied = leaves(seed_params(raw, 3, vary_data_seed=True))
    assert {path for path in before if before[path] != varied[path]} == set(seed_keys(raw))
    assert leaves(seed_params(raw, 0, vary_data_seed=True)) == before  # seed 0 is params.yaml itself
    assert leaves(raw) == before  # the input is not modified


def test_study_tags_come_from_the_environment():
    assert study_tags({"LATLAB_STUDY": "seeds", "LATLAB_STUDY_SEED": "2"}) == {"latlab.study": "seeds",
                                                                               "latlab.seed": "2"}
    assert study_tags({}) == {}


def test_summary_gives_mean_interval_and_n_per_rate():
    per_seed = {s: {"evaluate.json": {"rt": {"asr.prefill": rate, "n.prefill": 40, "perplexity": 1.1 + s}},
                    "lat.json": {"wall_seconds": 10.0}}
                for s, rate in enumerate([0.2, 0.3, 0.4])}
    summary = summarize_seeds(per_seed, **BOOTSTRAP)
    prefill = summary["evaluate.json:rt.asr.prefill"]
    assert prefill["mean"] == pytest.approx(0.3) and prefill["n_seeds"] == 3 and prefill["n_prompts"] == 40
    assert prefill["ci_seeds"] == pytest.approx([0.2, 0.4])
    low, high = prefill["ci_pooled"]  # 36 of 120 prompt-seeds
    assert low < 0.3 < high and high - low < 0.2
    assert "ci_pooled" not in summary["evaluate.json:rt.perplexity"]  # not a rate
    assert not [k for k in summary if k.startswith("lat.json")]  # training bookkeeping is not a headline number
    table = evaluate_markdown(summary, 0.95)
    assert "| rt | – | – | – | 0.30 [0.20, 0.40] (40×3) |" in table and "perplexity" not in table
    assert sample_size_key("rt-lat.asr.latent.eps_2") == "rt-lat.n.latent"
    assert sample_size_key("rt.benign_compliance") == "rt.n.benign" and sample_size_key("rt.perplexity") is None


TOY_STAGE = '''
import json, os, pathlib, yaml
p = yaml.safe_load(open("params.yaml"))
pathlib.Path("metrics/backdoor_removal").mkdir(parents=True, exist_ok=True)
lat = 0.1 + 0.01 * p["lat"]["seed"]
json.dump({"rt": {"asr.prefill": 0.5, "n.prefill": 4, "backdoor_asr": 0.9, "harmful_asr": 0.0},
           "rt-lat": {"asr.prefill": lat},
           "env": {"seed": int(os.environ["LATLAB_STUDY_SEED"]), "study": os.environ["LATLAB_STUDY"],
                   "threads": int(os.environ["OMP_NUM_THREADS"]), "world_seed": p["seed"]}},
          open("metrics/evaluate.json", "w"))
json.dump({"after.backdoor_asr": 0.5}, open("metrics/backdoor_removal/sft.json", "w"))
'''


def test_study_flow_runs_each_seed_and_writes_the_scorecard(tmp_path, monkeypatch):
    """A toy DVC repo (one stage writing metrics from its seed's params and environment) through the real flow:
    per-seed work directories, seed offsets reaching the stage, collection, summary and scorecard."""
    from flows.study import EVALUATE_MD, SCORECARD_JSON, SCORECARD_MD, STUDY_DIR

    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    shutil.copy(PARAMS_YAML, tmp_path / "params.yaml")
    (tmp_path / "toy_stage.py").write_text(TOY_STAGE)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"evaluate": {
        "cmd": "python -m toy_stage", "outs": ["metrics/evaluate.json"]}}}))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, env={**os.environ, "PATH": path})
    monkeypatch.setenv("PATH", path)
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    raw["study"]["workdir"] = "runs/study"
    for s in (0, 1, 2):  # an earlier run's metrics of a stage this run does not have: stale, must not be collected
        stale = tmp_path / "runs/study" / f"seed_{s}" / "metrics"
        stale.mkdir(parents=True)
        for stage, tokens in (("lat", 1.0), ("r2d2", 2.0)):
            (stale / f"{stage}.json").write_text(json.dumps({"compute.forward_tokens": tokens,
                                                             "compute.backward_tokens": tokens}))
    # In a process of its own: Prefect's log and event workers are process-global, and after the deployment tests
    # (a server that is gone by then) the harness's teardown drained them for ~12 minutes in one pytest process.
    (tmp_path / "raw.json").write_text(json.dumps(raw))
    script = (f"import json; from prefect.testing.utilities import prefect_test_harness; "
              f"from flows.study import run_study; raw = json.load(open({str(tmp_path / 'raw.json')!r}))\n"
              f"with prefect_test_harness(server_startup_timeout=120):\n"
              f"    print(json.dumps(run_study(raw, [0, 1, 2], repo={str(tmp_path)!r})))")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failed"] == {}
    for s in (0, 1, 2):
        written = json.loads((tmp_path / STUDY_DIR / f"seed_{s}" / "evaluate.json").read_text())
        assert written["env"] == {"seed": s, "study": raw["study"]["name"], "threads": raw["study"]["torch_threads"],
                                  "world_seed": raw["seed"]}
        assert written["rt-lat"]["asr.prefill"] == pytest.approx(0.1 + 0.01 * (raw["lat"]["seed"] + s))
        assert "evaluate" in json.loads((tmp_path / "runs/study" / f"seed_{s}" / "reports/study_run.json").read_text(
            ))["stages"]
    card = json.loads((tmp_path / SCORECARD_JSON).read_text())
    rows = {row["claim"]: row for row in card["claims"]}
    assert card["seeds"] == [0, 1, 2] and len(rows) >= 10
    prefill = rows["Targeted LAT lowers prefill ASR relative to RT"]
    assert prefill["effect"] == pytest.approx(-0.39) and prefill["verdict"] == "supported"
    assert rows["LAT needs less training compute than R2D2"]["verdict"] == "inconclusive"  # lat.json not produced
    assert not (tmp_path / STUDY_DIR / "seed_0" / "lat.json").exists()
    summary = json.loads((tmp_path / STUDY_DIR / "summary.json").read_text())["numbers"]
    assert summary["evaluate.json:rt.asr.prefill"]["n_prompts"] == 4
    assert "Targeted LAT lowers prefill ASR" in (tmp_path / SCORECARD_MD).read_text()
    assert "| rt-lat | – | – | – | 0.11 [0.10, 0.12] (3 seeds) |" in (tmp_path / EVALUATE_MD).read_text()


def test_a_partial_study_run_clears_only_its_stages_outputs(tmp_path):
    """`flows.study --stages evaluate` (e.g. after an attack setting changed) reruns evaluate on every seed and keeps
    the seeds' other metrics for the scorecard; a whole-pipeline run clears every metric first."""
    from flows.dag import resolved_with
    from flows.study import clear_stale, stage_outputs_of

    with resolved_with(REPO / "params.yaml", REPO) as dag:
        stale = stage_outputs_of(dag, ["evaluate"])
    assert {"metrics/evaluate.json", "metrics/judges.json", "reports/predictions"} <= set(stale)
    assert not any(path.startswith("metrics/base") or path.startswith("models/") for path in stale)
    workdir = tmp_path / "seed_1"
    for name in ("metrics/base.json", "metrics/evaluate.json", "metrics/judges.json", "reports/predictions/rt/a.jsonl"):
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).write_text("{}")
    clear_stale(workdir, stale)
    assert (workdir / "metrics/base.json").exists()
    assert not (workdir / "metrics/evaluate.json").exists() and not (workdir / "reports/predictions").exists()
    clear_stale(workdir, None)
    assert not (workdir / "metrics").exists()


@pytest.mark.slow
def test_study_on_the_smoke_profile_end_to_end(tmp_path):
    """Two seeds of the smoke pipeline's jailbreak track (generate through evaluate; the whole pipeline twice would
    cost CI ~10 minutes more) in a copy of the repository, with the smoke profile's own split and method lists."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    repo = tmp_path / "repo"
    for name in files:
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": f"{repo / 'src'}:{repo}", "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)  # .dvc/ came with the copy
    stages = ["generate", "validate", "base", "refusal", "lat", "lat_untargeted", "rt_eat", "r2d2", "evaluate"]
    done = subprocess.run([sys.executable, "-m", "flows.study", "--profile", "profiles/smoke.yaml", "--seeds", "0",
                           "1", "--stages", *stages], cwd=repo, env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    card = json.loads((repo / "metrics/scorecard.json").read_text())
    assert card["seeds"] == [0, 1] and len(card["claims"]) >= 10
    measured = {row["claim"] for row in card["claims"] if row["n_seeds"] == 2}
    # the jailbreak-track claims (LAT vs RT per attack, benign compliance, LAT vs R2D2 compute and GCG, RT backdoor)
    assert len(measured) >= 6, [row["claim"] for row in card["claims"] if row["n_seeds"] < 2]
    assert "LAT needs less training compute than R2D2" in measured
    for s in (0, 1):
        assert (repo / "metrics/study" / f"seed_{s}" / "evaluate.json").exists()
        assert (repo / "runs/study" / f"seed_{s}" / "mlflow.db").exists()


def test_unlearning_and_backdoor_tables_over_seeds_show_mean_interval_and_n():
    from latlab.report.seed_summary import backdoor_markdown, summarize_seeds, unlearning_markdown

    per_seed = {s: {"unlearning_eval.json": {"results": {"ga": {"qa.free_recall": r, "relearn.free_recall": 0.5}}},
                    "backdoor_removal/sft_lat.json": {"after.backdoor_asr": b, "after.harmful_asr": 0.0}}
                for s, r, b in ((0, 0.2, 0.3), (1, 0.4, 0.5), (2, 0.6, 0.4))}
    summary = summarize_seeds(per_seed, samples=2000, confidence=0.95, seed=0)
    unlearning = unlearning_markdown(summary, 0.95)
    row = next(line for line in unlearning.splitlines() if line.startswith("| ga |"))
    assert row.split(" | ")[1].startswith("0.40 [0.20, 0.60] (3 seeds)")  # qa.free_recall: mean, bootstrap CI, N
    assert row.split(" | ")[3] == "0.50 [0.50, 0.50] (3 seeds)"  # relearn.free_recall
    assert "–" in row  # a column the seeds did not measure is a dash, not a zero
    backdoor = backdoor_markdown(summary, 0.95)
    assert "| sft_lat | 0.40 [0.30, 0.50] (3 seeds) | 0.00 [0.00, 0.00] (3 seeds) | – |" in backdoor
