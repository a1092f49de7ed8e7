"""The DVC remote hand-off that cluster mode relies on, with a local-directory remote standing in for MinIO:
outputs pushed from one clone are pulled in another, where the stage is then up to date and skipped; and
flows/cluster.py's stage runner (pull inputs, repro one stage, push, return the dvc.lock entry) chains two stages
across two clones that share nothing but the remote and the lock entry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.cluster import (
    apply_overrides,
    execute_stage,
    execution_waves,
    lock_entry_from_markdown,
    lock_entry_markdown,
    read_lock,
    stage_parents,
    sweep_points,
)
from latlab.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).with_name("dvc")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "latlab-test", "GIT_AUTHOR_EMAIL": "test@latlab.invalid",
    "GIT_COMMITTER_NAME": "latlab-test", "GIT_COMMITTER_EMAIL": "test@latlab.invalid",
}  # fmt: skip
PY = sys.executable
DVC_YAML = {
    "stages": {
        "make": {
            "cmd": f"{PY} -c \"import pathlib; pathlib.Path('a.txt').write_text('alpha\\n')\"",
            "outs": ["a.txt"],
        },
        "double": {
            "cmd": f"{PY} -c \"import pathlib; pathlib.Path('b.txt').write_text(pathlib.Path('a.txt').read_text() * 2)\"",
            "deps": ["a.txt"],
            "outs": ["b.txt"],
        },
    }
}

pytestmark = pytest.mark.skipif(not DVC.exists() or shutil.which("git") is None, reason="needs the venv's dvc and git")


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, **GIT_ENV, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def dvc(*args: str, cwd: Path) -> str:
    return run([str(DVC), *args], cwd)


@pytest.fixture
def origin(tmp_path) -> tuple[Path, Path]:
    """A git+DVC repo with the two-stage dvc.yaml committed (no outputs yet) and a local-directory remote."""
    repo, remote = tmp_path / "origin", tmp_path / "remote"
    repo.mkdir()
    remote.mkdir()
    run(["git", "init", "-q", "-b", "main"], repo)
    dvc("init", "-q", cwd=repo)
    dvc("config", "core.check_update", "false", cwd=repo)
    dvc("remote", "add", "-d", "local", str(remote), cwd=repo)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "pipeline"], repo)
    return repo, remote


def test_outputs_pushed_from_one_clone_are_pulled_in_another_and_the_stage_is_skipped(origin, tmp_path):
    repo, _ = origin
    dvc("repro", "make", cwd=repo)
    dvc("push", cwd=repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "ran make"], repo)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "a.txt").exists()
    dvc("pull", "make", cwd=clone)
    assert (clone / "a.txt").read_text() == "alpha\n"
    assert "make" not in dvc("status", "make", cwd=clone)  # "Data and pipelines are up to date."
    out = dvc("repro", "make", cwd=clone)
    assert "didn't change, skipping" in out, out


def test_cluster_stage_runner_chains_stages_through_the_remote(origin, tmp_path, monkeypatch):
    repo, remote = origin
    assert execution_waves(stage_parents(repo)) == [["make"], ["double"]]
    # The work pool's env names the remote; configure_remote writes it to .dvc/config.local of each pod's copy.
    monkeypatch.setenv("LATLAB_DVC_REMOTE_URL", str(remote))
    monkeypatch.delenv("LATLAB_DVC_REMOTE_ENDPOINT", raising=False)

    pod_a = tmp_path / "pod_a"
    shutil.copytree(repo, pod_a, ignore=shutil.ignore_patterns(".git"))  # images carry no .git
    make_entry = execute_stage("make", pod_a)
    assert (pod_a / "a.txt").exists()

    pod_b = tmp_path / "pod_b"
    shutil.copytree(repo, pod_b, ignore=shutil.ignore_patterns(".git"))
    lock = read_lock(pod_b)
    lock["stages"]["make"] = make_entry
    double_entry = execute_stage("double", pod_b, lock=lock)
    assert (pod_b / "a.txt").read_text() == "alpha\n"  # pulled, never produced in this pod
    assert (pod_b / "b.txt").read_text() == "alpha\nalpha\n"
    assert double_entry["deps"][0]["md5"] == make_entry["outs"][0]["md5"]

    # A third pod given the merged lock finds both stages' outputs in the remote: nothing to run.
    pod_c = tmp_path / "pod_c"
    shutil.copytree(repo, pod_c, ignore=shutil.ignore_patterns(".git"))
    lock["stages"]["double"] = double_entry
    assert execute_stage("double", pod_c, lock=lock) == double_entry
    status = dvc("status", cwd=pod_c)
    assert "changed" not in status, status


def test_execution_waves_restricts_to_selected_stages_and_rejects_unknown_ones():
    parents = {"generate": [], "base": ["generate"], "refusal": ["base"], "lat": ["refusal"], "r2d2": ["refusal"]}
    assert execution_waves(parents) == [["generate"], ["base"], ["refusal"], ["lat", "r2d2"]]
    assert execution_waves(parents, ["lat", "r2d2", "refusal"]) == [["refusal"], ["lat", "r2d2"]]
    # the params check stage joins every selection: a pod's stage needs its output, and it refuses bad params first
    checked = {"check": [], **parents, "generate": ["check"]}
    assert execution_waves(checked, ["lat", "r2d2"]) == [["check"], ["lat", "r2d2"]]
    with pytest.raises(ValueError, match="unknown stage"):
        execution_waves(parents, ["nope"])
    with pytest.raises(ValueError, match="cycle"):
        execution_waves({"a": ["b"], "b": ["a"]})


def test_sweep_points_cover_the_grid_and_overrides_reach_only_existing_keys(tmp_path):
    points = sweep_points({"lat.epsilon": [0.5, 1.0], "lat.layers": [[1], [2], [3]]})
    assert len(points) == 6 and {"lat.epsilon": 1.0, "lat.layers": [3]} in points
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    apply_overrides(tmp_path, points[-1])
    lat = yaml.safe_load((tmp_path / "params.yaml").read_text())["lat"]
    assert lat["epsilon"] == 1.0 and lat["layers"] == [3]
    before = (tmp_path / "params.yaml").read_text()
    with pytest.raises(ConfigError, match="nolat is not a section"):
        apply_overrides(tmp_path, {"nolat.epsilon": 1.0})
    with pytest.raises(ConfigError, match=r"lat.layer: unknown key \(did you mean lat.layers\?\)"):
        apply_overrides(tmp_path, {"lat.layer": 3})
    with pytest.raises(ConfigError, match="lat.epsilon: Input should be greater than 0"):
        apply_overrides(tmp_path, {"lat.epsilon": -1.0})
    assert (tmp_path / "params.yaml").read_text() == before  # a bad override changes nothing


def test_lock_entry_survives_the_artifact_round_trip():
    entry = {"cmd": "python -m stages.lat", "deps": [{"path": "models/rt", "md5": "ab.dir", "nfiles": 3}]}
    assert lock_entry_from_markdown(lock_entry_markdown("lat", entry)) == entry
