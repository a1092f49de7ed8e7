"""The Prefect flow: DAG order from dvc.yaml, one task per stage, on a throwaway DVC repo (prefect_test_harness)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.dag import stage_order, stage_parents

REPO = Path(__file__).resolve().parents[1]


def test_repository_dag_order():
    order = stage_order(REPO)
    position = {name: i for i, name in enumerate(order)}

    def first(prefix):  # a foreach/matrix group: its first / last item
        return min(i for n, i in position.items() if n.split("@")[0] == prefix)

    def last(prefix):
        return max(i for n, i in position.items() if n.split("@")[0] == prefix)

    for before, after in [("generate", "validate"), ("validate", "base"), ("base", "refusal"),
                          ("refusal", "lat"), ("r2d2", "evaluate"), ("evaluate", "compare"),
                          ("base", "unlearn"), ("unlearn", "unlearning_eval"),
                          ("backdoor_removal", "backdoor_report"),
                          ("spawrious_generate", "spawrious_train"), ("spawrious_train", "spawrious_evaluate")]:
        assert last(before) < first(after), (before, after)
    assert stage_order(REPO, ["compare", "generate"]) == ["check", "generate", "compare"]
    assert [s for s in stage_order(REPO, ["backdoor_removal"])] == \
        ["check"] + sorted(s for s in order if s.startswith("backdoor_removal@"))
    with pytest.raises(ValueError, match="unknown stage"):
        stage_order(REPO, ["nope"])


def _toy_dvc_repo(root: Path) -> None:
    """Three stages: a -> b -> c, each appending its name to a log so the run order is visible."""
    stages = {}
    for name, dep in (("a", None), ("b", "out/a.txt"), ("c", "out/b.txt")):
        cmd = f"mkdir -p out && echo {name} > out/{name}.txt && echo {name} >> order.log"
        stages[name] = {"cmd": cmd, "outs": [f"out/{name}.txt"], **({"deps": [dep]} if dep else {})}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, env={**os.environ, "PATH": _path()})


def _path() -> str:
    return f"{Path(sys.executable).parent}:{os.environ['PATH']}"


def test_flow_runs_stages_in_dag_order(tmp_path, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import latlab_pipeline, run_stage

    _toy_dvc_repo(tmp_path)
    assert stage_parents(tmp_path) == {"a": [], "b": ["a"], "c": ["b"]}
    monkeypatch.setenv("PATH", _path())
    with prefect_test_harness(server_startup_timeout=120):
        assert latlab_pipeline(repo=str(tmp_path)) == ["a", "b", "c"]
        assert (tmp_path / "order.log").read_text().split() == ["a", "b", "c"]
        assert latlab_pipeline(stages=["c"], repo=str(tmp_path)) == ["c"]  # up to date: DVC skips it
        # each stage that ran was a task of its name, Completed; the second run started none
        assert sorted(_task_runs().items()) == [("a", "Completed"), ("b", "Completed"), ("c", "Completed")]
        # one stage as its own flow run (the per-stage deployments): a changed command reruns it alone, not c
        stages = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
        stages["stages"]["b"]["cmd"] += " && echo b2 >> order.log"
        (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(stages))
        assert run_stage("b", repo=str(tmp_path)) == "b"
        assert (tmp_path / "order.log").read_text().split() == ["a", "b", "c", "b", "b2"]
        # a failing stage: its task fails after one retry, the flow fails naming it, nothing after it runs
        stages["stages"]["b"]["cmd"] = "echo b-tried >> order.log && exit 3"
        (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(stages))
        with pytest.raises(RuntimeError, match="stage.* b failed"):
            latlab_pipeline(repo=str(tmp_path))
        assert _task_runs()["b"] == "Failed"
    assert (tmp_path / "order.log").read_text().split() == ["a", "b", "c", "b", "b2", "b-tried", "b-tried"]
    assert (tmp_path / "dvc.lock").exists()


def _task_runs() -> dict[str, str]:
    """Task run name -> state of the latest run of that name, from the Prefect API of the test harness."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(sort=TaskRunSort.EXPECTED_START_TIME_DESC)
    latest: dict[str, str] = {}
    for run in runs:
        latest.setdefault(run.name, run.state.name)
    return latest


def test_stage_items_follow_the_params_of_the_run_not_the_repo(tmp_path):
    """A profile or a study seed that changes a matrix list (here the Spawrious splits) or a method table runs its
    own items: resolving dvc.yaml against the repo's params.yaml ran `spawrious_train@erm-m2m_easy` on a smoke study
    whose data holds only o2o_easy."""
    from flows.dag import resolved_with, stage_commands, stage_order

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["spawrious"]["splits"] = ["o2o_easy"]
    raw["unlearn"] = {"ga": raw["unlearn"]["ga"]}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    with resolved_with(params, REPO) as dag:
        order, commands = stage_order(dag), stage_commands(dag)
    trained = sorted(s for s in order if s.startswith("spawrious_train@"))
    assert trained == [f"spawrious_train@{m}-o2o_easy" for m in sorted(raw["spawrious"]["methods"])]
    assert [s for s in order if s.startswith("unlearn@")] == ["unlearn@ga"]
    assert commands["unlearn@ga"] == "python -m stages.unlearn --method ga"
    assert set(order) == set(commands)


def test_spawrious_flow_selects_the_track_s_stages_and_every_matrix_cell():
    """flows.spawrious runs the pipeline flow's machinery on the group names: the params check, the generator,
    every spawrious_train@<method>-<split> cell of params.yaml's matrix, the evaluation; nothing else."""
    from flows.spawrious import SPAWRIOUS_STAGES

    raw = yaml.safe_load((REPO / "params.yaml").read_text())["spawrious"]
    cells = {f"spawrious_train@{m}-{s}" for m in raw["methods"] for s in raw["splits"]}
    order = stage_order(REPO, SPAWRIOUS_STAGES)
    assert order[:2] == ["check", "spawrious_generate"] and order[-1] == "spawrious_evaluate"
    assert set(order[2:-1]) == cells
