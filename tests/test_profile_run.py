"""flows.profile_run: a profile's work directory gets the merged params with real-model paths resolved, and the
stage commands come from DVC's own resolution of dvc.yaml (foreach items included)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.dag import stage_commands, stage_env
from flows.launch import run_command
from flows.profile_run import prepare_workdir
from latlab.config import ConfigError, load_params

ROOT = Path(__file__).resolve().parents[1]


def test_workdir_params_merge_the_profile_and_resolve_model_source(tmp_path):
    (tmp_path / "repo" / "models" / "real").mkdir(parents=True)
    (tmp_path / "repo" / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    profile = tmp_path / "p.yaml"
    lora = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    profile.write_text(yaml.safe_dump({"model": {"source": "models/real", "lora": lora},
                                       "base": {"fine_tune": False}, "evaluate": {"models": ["base", "rt"]}}))
    params = load_params(prepare_workdir(profile, tmp_path / "work", tmp_path / "repo"))
    assert params.model.source == str((tmp_path / "repo" / "models" / "real").resolve())
    assert params.model.lora.r == 4 and not params.base.fine_tune
    assert params.evaluate.models == ["base", "rt"]
    assert (tmp_path / "repo" / "params.yaml").read_text() == (ROOT / "params.yaml").read_text()  # untouched


def test_bad_profile_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump({"base": {"fine_tune": False}}))  # toy model cannot skip training
    with pytest.raises(ConfigError, match="base.fine_tune"):
        prepare_workdir(profile, tmp_path / "work", tmp_path / "repo")


def test_stage_commands_expand_foreach_items():
    commands = stage_commands(ROOT)
    assert commands["lat"] == "python -m stages.lat --section lat"
    assert commands["unlearn@rmu"] == "python -m stages.unlearn --method rmu"
    assert commands["evaluate"] == "python -m stages.evaluate"


@pytest.mark.parametrize("cmd", [f"{sys.executable} -m progress", "python -m progress"])  # subprocess, forked
def test_stage_output_streams_line_by_line_including_progress_bar_updates(tmp_path, cmd):
    lines = []
    (tmp_path / "progress.py").write_text("import sys, time\nsys.stdout.write('a\\rb\\n'); sys.stdout.flush()\n"
                                          "time.sleep(0.5); print('c', end=''); sys.exit(3)\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    assert run_command(cmd, tmp_path, env, tmp_path / "log", preload=("json",), emit=lines.append) == 3
    assert lines == ["a", "b", "c"]
    assert (tmp_path / "log").read_bytes() == b"a\rb\nc"


def test_stage_commands_find_this_interpreter_without_an_activated_venv(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    env = stage_env(str(ROOT))
    done = subprocess.run(["python", "-c", "import latlab, stages, sys; print(sys.executable)"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).parent == Path(sys.executable).parent
