"""latlab.tracking: what a stage run is tagged with, and which third-party warnings it silences."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mlflow.tracking import MlflowClient

from latlab.config import TrackingConfig


def _cfg(folder) -> TrackingConfig:
    return TrackingConfig(uri=(folder / "mlruns").as_uri(), artifact_location=str(folder / "mlartifacts"),
                          experiment="tags", log_models=False)


def _only_run_tags(cfg: TrackingConfig) -> dict[str, str]:
    client = MlflowClient(tracking_uri=cfg.uri)
    experiment = client.get_experiment_by_name(cfg.experiment).experiment_id
    (run,) = client.search_runs([experiment])
    return run.data.tags


def test_dvc_experiment_run_is_tagged_with_its_name_and_commit(workdir, monkeypatch):
    from latlab.tracking import stage_run

    monkeypatch.setenv("DVC_EXP_NAME", "lat-eps-sweep-3")
    monkeypatch.setenv("LATLAB_GIT_COMMIT", "0123abc")
    cfg = _cfg(workdir)
    with stage_run(cfg, "lat"):
        pass
    tags = _only_run_tags(cfg)
    assert tags["dvc_experiment"] == "lat-eps-sweep-3"
    assert tags["git_commit"] == "0123abc"
    assert tags["dvc_stage"] == "lat"


def test_plain_repro_run_has_no_experiment_tag(workdir, monkeypatch):
    from latlab.tracking import stage_run

    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    cfg = _cfg(workdir)
    with stage_run(cfg, "lat"):
        pass
    tags = _only_run_tags(cfg)
    assert "dvc_experiment" not in tags
    assert tags["git_commit"] == "test"


def test_only_the_hub_model_card_and_license_warnings_are_silenced(caplog):
    from latlab.tracking import silence_hub_warnings

    silence_hub_warnings()
    silence_hub_warnings()  # idempotent: one filter however many runs a process opens
    logger = logging.getLogger("mlflow.transformers")
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger="mlflow.transformers"):
        logger.warning("The model card could not be retrieved from the hub due to %s", "offline")
        logger.warning("Unable to find license information for this model. Please verify permissible usage ...")
        logger.warning("Unable to save the model card text due to: UnicodeError")
    assert [r.getMessage() for r in caplog.records] == ["Unable to save the model card text due to: UnicodeError"]


def test_latest_stage_runs_link_the_newest_finished_run_per_stage(workdir):
    import time

    import pytest

    from latlab.tracking import LOCAL_UI, latest_stage_runs, stage_run

    cfg = _cfg(workdir)
    ids = {}
    for stage in ("evaluate", "evaluate", "interpret"):
        with stage_run(cfg, stage) as run:
            time.sleep(0.01)
            ids[stage] = run.run_id
    with pytest.raises(RuntimeError), stage_run(cfg, "compare"):
        raise RuntimeError("a failed run is not linked")
    runs = latest_stage_runs(cfg)
    assert set(runs) == {"evaluate", "interpret"}
    assert runs["evaluate"]["run_id"] == ids["evaluate"]  # the second, newer evaluate run
    assert runs["evaluate"]["url"].startswith(LOCAL_UI + "/#/experiments/")
    assert runs["evaluate"]["url"].endswith("/runs/" + ids["evaluate"])
    assert runs["interpret"]["duration_s"] >= 0.01


def test_a_training_run_records_its_data_folder_as_an_input_dataset(workdir):
    from latlab.tracking import stage_run

    cfg = _cfg(workdir)
    (workdir / "data" / "world").mkdir(parents=True)
    (workdir / "data" / "world" / "facts.jsonl").write_text("{}\n")
    with stage_run(cfg, "base") as run:
        run.log_dataset("data/world", "0123456789abcdef0123")
    client = MlflowClient(tracking_uri=cfg.uri)
    (inputs,) = [client.get_run(run.run_id).inputs.dataset_inputs]
    assert [(d.dataset.name, d.dataset.digest) for d in inputs] == [("data/world", "0123456789abcdef")]
    assert [t.value for d in inputs for t in d.tags if t.key == "mlflow.data.context"] == ["training"]


_FIRST_STAGE = """
import sys, time
from latlab.config import TrackingConfig
from latlab.tracking import stage_run
go = float(sys.argv[1])
time.sleep(max(0.0, go - time.time()))  # every process past its imports, then all touch the new store at once
cfg = TrackingConfig(uri="sqlite:///mlflow.db", artifact_location="mlartifacts", experiment="fresh", log_models=False)
with stage_run(cfg, sys.argv[2], dep_digests={}) as run:
    run.log_metrics({"x": 1.0})
"""


def test_stages_starting_at_once_on_a_fresh_workspace_share_one_new_store(workdir):
    """The first stages of a fresh clone start side by side (flows.repro --jobs 2): on a new SQLite store both used to
    run its schema migration and one died ("Online migration expected to match one row"), or both created the
    experiment. Four processes open their first run at the same instant; all must finish, in one experiment."""
    import subprocess
    import sys
    import time

    go = time.time() + 25  # past every process's import of mlflow on 2 busy cores
    procs = [subprocess.Popen([sys.executable, "-c", _FIRST_STAGE, str(go), f"stage{i}"], cwd=workdir,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(4)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n---\n".join(o[-1500:] for o in outputs)
    client = MlflowClient(tracking_uri="sqlite:///" + str(workdir / "mlflow.db"))
    (experiment,) = [e for e in client.search_experiments() if e.name == "fresh"]
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"stage{i}" for i in range(4)]


def test_version_aliases_name_the_study_seed_and_the_dvc_experiment():
    from latlab.tracking import version_aliases

    assert version_aliases({}) == []
    assert version_aliases({"LATLAB_STUDY": "seeds", "LATLAB_STUDY_SEED": "2"}) == ["seeds-seed2"]
    assert version_aliases({"DVC_EXP_NAME": "exp-1a2b3", "LATLAB_STUDY": "my study", "LATLAB_STUDY_SEED": "0"}) == [
        "my_study-seed0", "dvc-exp-exp-1a2b3"]  # a space is not an alias character


def test_compare_by_alias_selects_the_aliased_versions_not_the_latest(workdir, monkeypatch, capsys):
    """Two seeds of a study register into one registry, then an unrelated rerun registers a newer version: `compare
    --alias` lists exactly the versions each seed produced."""
    import torch

    from latlab.config import ConfigError, load_params
    from latlab.tracking import stage_run
    from stages.compare import compare_aliases

    cfg = TrackingConfig(uri=f"sqlite:///{workdir / 'mlflow.db'}", artifact_location=str(workdir / "mlartifacts"),
                         experiment="aliases", log_models=True)
    model, example = torch.nn.Linear(2, 1), torch.zeros(1, 2).numpy()
    registered = {}
    for seed in ("0", "1", None):
        if seed is None:
            monkeypatch.delenv("LATLAB_STUDY")
            monkeypatch.delenv("LATLAB_STUDY_SEED")
        else:
            monkeypatch.setenv("LATLAB_STUDY", "seeds")
            monkeypatch.setenv("LATLAB_STUDY_SEED", seed)
        for name in ("latlab-rt", "latlab-rt-lat"):
            with stage_run(cfg, "lat") as run:
                run.log_metrics({"seed_metric": float(seed or 9)})
                registered[(name, seed)] = run.register_torch_model(model, name, example, {"made_by": f"s{seed}"})
    client = MlflowClient(tracking_uri=cfg.uri)
    assert client.get_registered_model("latlab-rt").aliases == {"seeds-seed0": 1, "seeds-seed1": 2}
    # an evaluation linked to seed 1's latlab-rt logged model (what evaluate does: record_model_evaluation)
    model_id = client.get_model_version("latlab-rt", "2").source.removeprefix("models:/")
    client.log_metric(client.get_model_version("latlab-rt", "2").run_id, "harmful_asr", 0.25, model_id=model_id)
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml").model_copy(update={"tracking": cfg})
    out = workdir / "reports/compare_seeds.md"
    table = compare_aliases(params, ["seeds-seed0", "seeds-seed1"], out)
    header = table.splitlines()[0]
    assert header == ("| metric | latlab-rt v1 @seeds-seed0 | latlab-rt-lat v1 @seeds-seed0 | latlab-rt v2 @seeds-seed1 "
                      "| latlab-rt-lat v2 @seeds-seed1 |")
    assert "| harmful_asr | – | – | 0.250 | – |" in table  # the evaluation reaches the column of its version
    assert "v3" not in table and out.read_text() == table and capsys.readouterr().out == table
    with pytest.raises(ConfigError, match="--alias seeds-seed7: no registered model"):
        compare_aliases(params, ["seeds-seed7"])
