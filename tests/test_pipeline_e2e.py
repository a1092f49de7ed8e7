"""End to end: the smoke profile in a temporary git copy of the repository, its jailbreak track through `interpret` by
plain `dvc repro` (each stage a fresh `python -m` process, as a researcher's rerun) and the rest by `make demo`'s runner
(flows.repro: pre-warmed stage processes, two at once), then the Prefect flow over the same DAG (every stage up to
date), then the metrics files and the MLflow registry contents.

Why split: every stage under plain `dvc repro` pays ~20 s of Python and DVC start-up on this 2-core machine (36 stages:
940 s of CI, most of it start-up); the split keeps both runners covered, and that each sees the other's stages as up
to date, in ~half the time."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
# the method tables, read from params.yaml: a method added there is tested here without an edit
_TABLES = yaml.safe_load((REPO / "params.yaml").read_text())
UNLEARN = tuple(_TABLES["unlearn"])
DVC_STAGES = ("interpret",)  # plain `dvc repro` runs these and their upstream; flows.repro the rest
BACKDOOR = tuple(_TABLES["backdoor_removal"])


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory) -> tuple[Path, dict, str]:
    repo = tmp_path_factory.mktemp("smoke") / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PREFECT_HOME": str(repo.parent / "prefect-home"), "MLFLOW_TRACKING_URI": "", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI")
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    _run(["git", "init", "-q"], repo, env, 30)
    _run([sys.executable, "-m", "latlab.profiles", "apply", "profiles/smoke.yaml"], repo, env, 60)
    _run(["git", "add", "-A"], repo, env, 30)
    _run([*git, "commit", "-qm", "smoke"], repo, env, 30)
    _run(["dvc", "repro", *DVC_STAGES], repo, env, 1200)
    done = _run([sys.executable, "-m", "flows.repro", "--jobs", "2"], repo, env, 1200)
    return repo, env, done.stdout


def test_each_runner_takes_up_where_the_other_stopped(smoke_repo):
    """flows.repro finds the stages `dvc repro` ran up to date (their dvc.lock entries are DVC's own) and runs only the
    rest; afterwards plain `dvc repro` has nothing to do."""
    repo, env, log = smoke_repo
    up_to_date = next(line for line in log.splitlines() if line.startswith("up to date: "))
    assert set(up_to_date.removeprefix("up to date: ").split(", ")) == {"check", "generate", "validate", "base",
                                                                       "refusal", "lat", "lat_untargeted", "rt_eat",
                                                                       "r2d2", "evaluate", "interpret"}
    assert "unlearning_eval: " in log and "report: " in log  # run by flows.repro, with its per-stage time line
    assert "up to date" in _run(["dvc", "repro"], repo, env, 300).stdout


def test_every_stage_wrote_its_metrics(smoke_repo):
    repo, *_ = smoke_repo
    for stage in ("generate", "validate", "base", "refusal", "lat", "lat_untargeted", "rt_eat", "r2d2", "evaluate",
                  "interpret", "spawrious_evaluate"):
        assert (repo / "metrics" / f"{stage}.json").exists(), stage
    validate = json.loads((repo / "metrics/validate.json").read_text())
    assert validate["success"] and validate["failed"] == 0
    evaluation = json.loads((repo / "metrics/evaluate.json").read_text())
    assert set(evaluation) == {"base", "rt", "rt-lat", "rt-lat-untargeted", "rt-eat", "r2d2"}
    for role, metrics in evaluation.items():
        for key in ("fact_acc.general", "fact_acc.forget", "fact_acc.related", "harmful_asr", "benign_compliance",
                    "backdoor_asr"):
            assert 0.0 <= metrics[key] <= 1.0, (role, key)
        assert metrics["perplexity"] >= 1.0
        assert {"asr.direct", "asr.prefill", "asr.gcg_universal", "asr.latent", "asr.refusal_direction"} <= set(metrics)
    judges = json.loads((repo / "metrics/judges.json").read_text())  # every judge on the labelled judge set
    assert {"toy", "refusal_phrase"} <= set(judges) and judges["toy"]["accuracy"] >= 0.95
    assert all("judge.refusal_phrase.kappa" in m and "incoherent.prefill" in m for m in evaluation.values())
    assert "(" in (repo / "reports/asr_matrix.md").read_text()  # ASR (incoherent rate) cells
    budget = json.loads((repo / "metrics/attack_budget.json").read_text())
    assert set(budget) == set(evaluation)
    for role, curves in budget.items():
        for name, curve in curves.items():
            assert len(curve["asr"]) == len(curve["budgets"]) and 0.0 <= curve["auc"] <= 1.0, (role, name)
    assert (repo / "plots/pareto.png").exists() and (repo / "plots/attack_budget/gcg_steps.png").exists()
    interpret = json.loads((repo / "metrics/interpret.json").read_text())
    assert interpret["acdc_planted"]["acdc_auc"] >= 0.95
    assert 0.0 <= interpret["acdc_planted_read_distractors"]["acdc_auc"] <= 1.0  # measured, not separable (#19)
    assert "rt.backdoor" in interpret["persistence"]
    assert (repo / "reports/validation.html").exists() and (repo / "plots/evaluate.png").exists()
    assert (repo / "dvc.lock").exists()


def test_unlearning_and_backdoor_removal_stages(smoke_repo):
    repo, *_ = smoke_repo
    for stem in ("oracle", *(f"unlearn/{m}" for m in UNLEARN), *(f"backdoor_removal/{m}" for m in BACKDOOR)):
        assert (repo / "metrics" / f"{stem}.json").exists(), stem
    unlearning = json.loads((repo / "metrics/unlearning_eval.json").read_text())
    assert set(unlearning["results"]) == {"original", "oracle", *UNLEARN}
    for name, metrics in unlearning["results"].items():
        for key in ("familiarity.mean_grade", "qa.ab_acc", "qa.free_recall", "extract.best_of",
                    "in_context.free_recall", "relearn.free_recall", "latent.max_acc", "collateral.free_recall",
                    "general.free_recall"):
            assert 0.0 <= metrics[key] <= 1.0, (name, key)
        assert metrics["general.perplexity"] >= 1.0
    assert set(unlearning["verdict"]) == set(UNLEARN)
    assert set(unlearning["verdict"].values()) <= {"removed", "suppressed"}
    for method in BACKDOOR:
        metrics = json.loads((repo / f"metrics/backdoor_removal/{method}.json").read_text())
        assert metrics["trigger_free_asserted"] is True
        for key in ("backdoor_asr", "benign_compliance", "harmful_asr", "fact_acc.general"):
            assert 0.0 <= metrics[f"before.{key}"] <= 1.0 and 0.0 <= metrics[f"after.{key}"] <= 1.0, (method, key)
    table = (repo / "reports/unlearning.md").read_text()
    assert "| oracle |" in table and ("**removed**" in table or "**suppressed**" in table)
    backdoor_table = (repo / "reports/backdoor.md").read_text()
    assert all(f"| {method} |" in backdoor_table for method in BACKDOOR)
    assert all(f"| {name} |" in table for name in UNLEARN)
    assert (repo / "plots/unlearning.png").exists()


def test_registry_holds_every_model_with_its_evaluation(smoke_repo):
    repo, *_ = smoke_repo
    with sqlite3.connect(repo / "mlflow.db") as db:
        names = {row[0] for row in db.execute("select name from registered_models")}
        tags = {(n, k) for n, k in db.execute("select name, key from model_version_tags")}
        runs = {row[0] for row in db.execute("select name from runs")}
    assert {"latlab-base", "latlab-rt", "latlab-rt-lat", "latlab-rt-lat-untargeted", "latlab-rt-eat",
            "latlab-r2d2", "latlab-oracle", *(f"latlab-unlearn-{m}" for m in UNLEARN),
            *(f"latlab-backdoor_removal-{m}" for m in BACKDOOR)} <= names
    assert any(name.startswith("latlab-spawrious-") for name in names)  # group-robustness models too
    assert ("latlab-base", "made_by") in tags
    # the model card on each version, with the evaluation section evaluate adds; evaluation metrics are numeric
    # and linked to the logged model, which is named by its role
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    card = client.get_model_version("latlab-rt-lat", "1").description
    assert "## rt-lat" in card and "parent: latlab-rt v1" in card and "### Training compute" in card
    assert "### Evaluation" in card and "harmful_asr:" in card and "Wilson" in card
    model_id = json.loads((repo / "models/rt-lat/latlab_model.json").read_text())["model_id"]
    logged = client.get_logged_model(model_id)
    assert logged.name == "rt-lat" and "harmful_asr" in {m.key for m in logged.metrics}
    assert client.get_registered_model("latlab-rt-lat").tags == {"track": "jailbreak", "role": "rt-lat"}
    assert {"generate", "validate", "base", "refusal", "evaluate", "compare", "oracle", "unlearning_eval",
            *(f"unlearn@{m}" for m in UNLEARN), *(f"backdoor_removal@{m}" for m in BACKDOOR)} <= runs
    table = (repo / "reports/compare.md").read_text()
    assert "latlab-base" in table and "latlab-rt" in table and "harmful_asr" in table


def test_prefect_flow_runs_the_same_dag(smoke_repo):
    repo, env, _ = smoke_repo
    done = _run([sys.executable, "-m", "flows.pipeline"], repo, env, 600)
    log = done.stdout + done.stderr
    for stage in ("generate", "validate", "base", "refusal", "evaluate", "compare"):
        assert f"'{stage}'" in log or f"{stage}" in log
    assert "Completed" in log
    status = _run(["dvc", "status"], repo, env, 120)
    assert "up to date" in status.stdout


def test_refusal_stage_runs_as_two_data_parallel_processes(smoke_repo, tmp_path):
    """`model.processes: 2`: the stage reruns itself under the launcher, both processes train, process 0 alone
    writes the model, metrics and one MLflow run; the result is the one-process stage's up to shard rounding."""
    repo, env, _ = smoke_repo
    work = tmp_path / "dp"
    (work / "models").mkdir(parents=True)
    (work / "data").symlink_to(repo / "data")
    (work / "stages").symlink_to(repo / "stages")
    shutil.copytree(repo / "models/base", work / "models/base")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"]["processes"] = 2
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    done = _run([sys.executable, "-m", "stages.refusal"], work, env, 600)
    assert "2 data-parallel processes" in done.stdout
    metrics = json.loads((work / "metrics/refusal.json").read_text())
    single = json.loads((repo / "metrics/refusal.json").read_text())
    assert metrics["processes"] == 2 and metrics["optimizer_steps"] == single["optimizer_steps"]
    assert metrics["compute.total_passes"] == single["compute.total_passes"]
    assert metrics["final_loss"] == pytest.approx(single["final_loss"], rel=0.1)
    assert (work / "models/rt/model.safetensors").exists()
    with sqlite3.connect(work / "mlflow.db") as db:
        assert [row[0] for row in db.execute("select name from runs")] == ["refusal"]
