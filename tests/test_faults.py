"""Faults and bad input (issue 16): one clear line and exit status 2, nothing lost, nothing online, no stale resume.

One test (or a few) per numbered finding of the issue; README.md "Troubleshooting" lists the messages."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import yaml

from latlab.config import ConfigError, parse_params
from latlab.data.records import write_jsonl
from latlab.env import offline_settings
from latlab.models.loading import save_model
from latlab.profiles import deep_merge
from tests.conftest import TINY_ARCH
from tests.settings import raw_params, with_params

# what this issue added is imported inside the tests, so that each test of the old code fails on its own finding

REPO = Path(__file__).resolve().parents[1]


# --- helpers -----------------------------------------------------------------------------------------------------

def write_params(folder: Path, override: dict) -> Path:
    """folder/params.yaml = the repository's params.yaml with `override` deep-merged in (validated)."""
    raw = deep_merge(raw_params(), override)
    parse_params(raw)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def file_tracking(folder: Path) -> dict:
    return {"tracking": {"uri": (folder / "mlruns").as_uri(), "artifact_location": str(folder / "mlartifacts"),
                         "log_models": False}}


def write_world(folder: Path, world: dict) -> None:
    for name, records in world.items():
        write_jsonl(folder / "data/world" / f"{name}.jsonl", records)


def run_statuses(folder: Path) -> dict[str, list[str]]:
    """MLflow run name -> statuses of its runs, from a file store (tracking.uri of `file_tracking`)."""
    from mlflow.tracking import MlflowClient

    found: dict[str, list[str]] = {}
    with mock.patch.dict(os.environ, {"MLFLOW_ALLOW_FILE_STORE": "true"}):
        client = MlflowClient(tracking_uri=(folder / "mlruns").as_uri())
        for experiment in client.search_experiments():
            for run in client.search_runs([experiment.experiment_id]):
                found.setdefault(run.info.run_name, []).append(run.info.status)
    return found


def one_line_exit(capsys, call) -> str:
    """Run a stage entry point that must refuse: exit status 2 and one stderr line, returned."""
    with pytest.raises(SystemExit) as stopped:
        call()
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "PYTHONPATH": f"{REPO / 'src'}:{REPO}", "OMP_NUM_THREADS": "1", "MLFLOW_ALLOW_FILE_STORE": "true",
            "LATLAB_GIT_COMMIT": "test", **extra}


# --- 1. a params check before DVC touches anything ---------------------------------------------------------------

@pytest.mark.parametrize("override, expected", [
    ({"base": {"lr": -1}}, "base.lr: Input should be greater than 0 (got -1)"),
    ({"base": {"steps": "many"}}, "base.steps: Input should be a valid integer"),
    ({"lat": {"epsilon": 0}}, "lat.epsilon: Input should be greater than 0 (got 0)"),
    ({"base": {"lrr": 1}}, "base.lrr: unknown key"),
])
def test_check_names_the_bad_value_in_one_line(tmp_path, capsys, override, expected):
    from latlab.check import main as check_main

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(deep_merge(raw_params(), override)))
    err = one_line_exit(capsys, lambda: check_main(["--params", str(path)]))
    assert expected in err


def test_check_names_a_misspelled_section_and_every_model_problem(tmp_path, capsys):
    from latlab.check import main as check_main

    raw = raw_params()
    raw["lta"] = raw.pop("lat")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    err = one_line_exit(capsys, lambda: check_main(["--params", str(path)]))
    assert err == f"error: {path}: lta: unknown key (did you mean lat?)"
    # constraints that need the model: one line each, against model.toy.num_layers (4 blocks)
    with pytest.raises(SystemExit):
        check_main(["-S", "lat.layers=[1, 9]", "-S", "attacks.latent.hook_points=[blocks.4.hook_resid_post]",
                    "-S", "unlearn.rmu.layer=7"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3
    assert any("lat.layers: block 9 does not exist: the model has 4 blocks" in line for line in lines)
    assert any("hook point 'blocks.4.hook_resid_post' does not exist" in line for line in lines)
    assert any("unlearn.rmu.layer: block 7" in line for line in lines)


def test_make_demo_and_the_flows_run_the_check_first():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:.*\bcheck\b", makefile, re.M), "make demo must depend on make check"
    assert re.search(r"^check:.*\n\t\$\(PY\) -m latlab\.check", makefile, re.M)
    for flow in ("pipeline.py", "profile_run.py", "cluster.py", "study.py"):
        assert "preflight(" in (REPO / "flows" / flow).read_text() or "params_problems(" in \
            (REPO / "flows" / flow).read_text(), flow


# --- 2. a layer beyond the model: refused by the stage before the model loads or MLflow opens ---------------------

@pytest.mark.parametrize("stage, override, key", [
    ("lat", {"lat": {"layers": [1, 9]}}, "lat.layers: block 9 does not exist: the model has 4 blocks"),
    ("evaluate", {"attacks": {"latent": {"hook_points": ["blocks.9.hook_resid_post"]}}},
     "attacks.latent.hook_points: hook point 'blocks.9.hook_resid_post' does not exist"),
    ("unlearn@rmu", {"unlearn": {"rmu": {"layer": 6}}}, "unlearn.rmu.layer: block 6 does not exist"),
])
def test_stage_refuses_a_block_beyond_the_model_before_loading(workdir, capsys, stage, override, key):
    from stages.common import run_stage

    (workdir / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())  # the params sections the stage declares
    write_params(workdir, {**file_tracking(workdir), **override})

    def body(params):
        raise AssertionError("the stage body ran: the model would load and an MLflow run open")

    err = one_line_exit(capsys, lambda: run_stage(stage, body))
    assert err.startswith(f"[{stage}] error: params.yaml: ") and key in err
    assert not (workdir / "mlruns").exists()


def test_a_stage_is_not_refused_for_another_stage_s_layers(workdir):
    from latlab.check import stage_problems

    (workdir / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    params = with_params({"lat": {"layers": [9]}})
    assert stage_problems(params, "refusal") == []
    assert len(stage_problems(params, "lat")) == 1


# --- 3. a broken data file, and the model sources: one line, exit 2 ----------------------------------------------

def test_truncated_dataset_line_exits_2_naming_file_and_line(workdir, capsys, tiny_world):
    from stages.common import run_stage
    from stages.validate import validate

    write_params(workdir, file_tracking(workdir))
    write_world(workdir, tiny_world)
    facts = workdir / "data/world/facts.jsonl"
    lines = facts.read_text().splitlines(keepends=True)
    lines[2] = lines[2][: len(lines[2]) // 2] + "\n"  # line 3 cut in half
    facts.write_text("".join(lines))
    err = one_line_exit(capsys, lambda: run_stage("validate", validate))
    assert err.startswith("[validate] error: data/world/facts.jsonl:3: not valid JSON"), err


def _no_weights(folder: Path) -> None:
    (folder / "notes.txt").write_text("not a model")


def _weights_only(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"\0")


def _no_tokenizer(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"\0")
    (folder / "config.json").write_text("{}")


@pytest.mark.parametrize("make, expected", [
    (None, "is not a local directory or .gguf file, and the hub id is not in the local Hugging Face cache"),
    (_no_weights, "has no *.safetensors weights"),
    (_weights_only, "has weights but no config.json"),
    (_no_tokenizer, "has weights and config.json but no tokenizer"),
])
def test_bad_model_source_exits_2_in_one_line(workdir, capsys, tiny_world, make, expected):
    from stages.base import base
    from stages.common import run_stage

    source = "models/does-not-exist"
    if make is not None:
        source = "models/broken"
        (workdir / source).mkdir(parents=True)
        make(workdir / source)
    write_params(workdir, {**file_tracking(workdir), "model": {"source": source, "toy": None},
                           "base": {"fine_tune": False}})
    write_world(workdir, tiny_world)
    err = one_line_exit(capsys, lambda: run_stage("base", base))
    assert err.startswith(f"[base] error: model.source: ") and source in err and expected in err, err
    from latlab.check import check

    problems = check(workdir / "params.yaml")  # the params check says the same before DVC runs
    assert len(problems) == 1 and expected in problems[0]


# --- 4. offline by construction -----------------------------------------------------------------------------------

GUARD = """
import runpy, socket, sys, traceback

def record(what):
    with open("network_attempts.txt", "a") as handle:
        handle.write(what + "\\n" + "".join(traceback.format_stack(limit=12)) + "\\n")

real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

def connect(self, address, *args, **kwargs):
    if self.family == socket.AF_UNIX:
        return real_connect(self, address, *args, **kwargs)
    record(f"connect {address!r}")
    raise OSError(101, "network blocked by the test")

def getaddrinfo(host, *args, **kwargs):
    if host in (None, "localhost", "127.0.0.1", "::1"):
        return real_getaddrinfo(host, *args, **kwargs)
    record(f"getaddrinfo {host!r}")
    raise socket.gaierror(-2, "network blocked by the test")

socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
sys.argv = ["stages.base"]
runpy.run_module("stages.base", run_name="__main__", alter_sys=True)
"""


def test_stage_with_a_local_model_makes_no_network_attempt(tmp_path, tiny_world, tiny_tokenizer, tiny_model):
    """`python -m stages.base` as DVC runs it, with none of offline.env in the environment: the stage module applies
    it before transformers or MLflow are imported, so registering a local model (MLflow's model-card lookup) makes no
    connection; the saved tokenizer does not record how it was loaded."""
    save_model(tiny_model, tiny_tokenizer, tmp_path / "models/local")
    write_params(tmp_path, {**file_tracking(tmp_path), "tracking": {**file_tracking(tmp_path)["tracking"],
                                                                    "log_models": True},
                            "model": {"source": "models/local", "toy": None}, "base": {"fine_tune": False}})
    write_world(tmp_path, tiny_world)
    (tmp_path / "guard.py").write_text(GUARD)
    env = {k: v for k, v in child_env().items() if k not in offline_settings()}
    done = subprocess.run([sys.executable, "guard.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    attempts = tmp_path / "network_attempts.txt"
    assert not attempts.exists(), attempts.read_text()[:3000]
    saved = (tmp_path / "models/base/tokenizer_config.json").read_text()
    assert "local_files_only" not in saved and "is_local" not in saved


def _third_party_before_latlab(path: Path) -> str | None:
    """The first top-level import of a third-party module before `latlab` is imported, or None."""
    project = {"latlab", "stages", "flows"}  # stages/ and flows/ import latlab in their __init__.py
    for node in ast.parse(path.read_text()).body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
        for name in names:
            top = name.split(".")[0]
            if top in project:
                return None
            if top not in sys.stdlib_module_names and top != "__future__":
                return f"{path.relative_to(REPO)}:{node.lineno} imports {name} before latlab"
    return None


def test_every_entry_point_applies_the_offline_env_before_third_party_imports():
    """`python -m stages.x` / `flows.x` run the package's __init__.py first; scripts, benchmarks and the tests'
    conftest run as files."""
    files = [REPO / "stages/__init__.py", REPO / "flows/__init__.py", REPO / "tests/conftest.py",
             *(REPO / "scripts").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]
    for package in ("stages", "flows"):
        init = (REPO / package / "__init__.py").read_text()
        assert re.search(r"^import latlab\b", init, re.M), f"{package}/__init__.py must import latlab"
    problems = [p for p in map(_third_party_before_latlab, files) if p]
    assert not problems, "\n".join(problems)


# --- 5. checkpoints: fingerprint of params, inputs and code; resumed metrics count the whole run -------------------

class Killed(Exception):
    pass


def test_checkpoint_of_other_inputs_starts_fresh_and_a_resume_counts_the_whole_run(workdir, capsys, tiny_world,
                                                                                   tiny_tokenizer):
    from latlab.models.loading import build_toy_model
    from latlab.world.curriculum import refusal_pools
    from stages.common import sft_trainer, train_and_register

    (workdir / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"refusal": {
        "cmd": "python -m stages.refusal", "deps": ["data/world", "models/base"]}}}))
    write_world(workdir, tiny_world)
    (workdir / "models/base").mkdir(parents=True)
    (workdir / "models/base/weights.bin").write_bytes(b"starting model")
    params = with_params({**file_tracking(workdir), "model": {"device": "cpu"},
                          "refusal": {"steps": 6, "batch_size": 4, "warmup_steps": 0, "log_every": 2,
                                      "checkpoint_every": 2}})

    def run(kill_at: int | None) -> dict:
        model = build_toy_model(TINY_ARCH, tiny_tokenizer, 0)
        trainer = sft_trainer(model, tiny_tokenizer, refusal_pools(tiny_world), {"harmful": 1.0, "benign": 1.0},
                              params.refusal, "refusal")

        def train(checkpoint_dir, on_log):
            def log(step, row):
                on_log(step, row)
                if step == kill_at:
                    raise Killed
            return trainer(checkpoint_dir, log)

        return train_and_register(params, "refusal", "rt", model, tiny_tokenizer, train, params.refusal, {})

    with pytest.raises(Killed):
        run(kill_at=4)  # killed after the step-2 checkpoint
    assert (workdir / "checkpoints/refusal/state.json").exists()
    (workdir / "data/world/facts.jsonl").write_text((workdir / "data/world/facts.jsonl").read_text()[:-200] + "\n")
    capsys.readouterr()
    fresh = run(kill_at=None)  # other data: the old checkpoint is not resumed
    assert fresh["resumed_from_step"] == 0
    assert "was made with other settings, data, starting model or code: starting fresh" in capsys.readouterr().out
    assert not (workdir / "checkpoints/refusal").exists()

    with pytest.raises(Killed):
        run(kill_at=4)
    resumed = run(kill_at=None)  # same inputs: resumed, and the metrics count all 6 steps
    assert resumed["resumed_from_step"] == 2
    assert resumed["optimizer_steps"] == 6 == fresh["optimizer_steps"]
    assert resumed["compute.total_passes"] == fresh["compute.total_passes"] == 6 * 4


def test_outputs_current_after_dvc_repro_clear_the_stage_s_checkpoint(tmp_path):
    """The cluster flow runs `dvc repro --single-item <stage>`; when it succeeds (the stage ran, or DVC restored its
    outputs from the run cache) a checkpoint of that stage left by a killed run is removed; so does flows.repro
    (`make demo`, the local Prefect flow) for each stage it commits, the local flow for every stage up to date after
    its run, and `make demo` removes all after a complete run."""
    from flows.dag import clear_stage_checkpoints

    for name in ("base/state.json", "base.old/state.json", "r2d2.r2d2_pool.json", "unlearn/ga/state.json",
                 "unlearn/ga_lat/state.json", "lat_untargeted/state.json"):
        (tmp_path / "checkpoints" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "checkpoints" / name).write_text("{}")
    clear_stage_checkpoints(tmp_path, ["base", "r2d2", "unlearn@ga", "lat"])
    left = sorted(str(p.relative_to(tmp_path / "checkpoints")) for p in (tmp_path / "checkpoints").rglob("*.json"))
    assert left == ["lat_untargeted/state.json", "unlearn/ga_lat/state.json"]
    for flow, call in (("pipeline.py", "clear_stage_checkpoints(Path(repo), order)"),
                       ("cluster.py", "clear_stage_checkpoints(cwd, [stage])"),
                       ("repro.py", "clear_stage_checkpoints(repo, batch)")):
        assert call in (REPO / "flows" / flow).read_text(), flow
    assert "-m flows.repro --jobs 2 && rm -rf checkpoints" in (REPO / "Makefile").read_text()


def test_resumed_work_counters_cover_the_whole_run(tiny_model, tmp_path):
    import torch

    from latlab.config import TrainConfig
    from latlab.models.compute import Compute
    from latlab.training.loop import checkpoint_inputs, train_loop
    from tests.settings import make

    cfg = make(TrainConfig, steps=6, batch_size=2, warmup_steps=0, checkpoint_every=2, log_every=1)

    def trained(kill_at: int | None) -> Compute:
        counter = Compute()

        def step_loss(model, step):
            if step == kill_at:
                raise Killed
            counter.forward(10)
            return sum(p.sum() for p in model.parameters()) * 0.0 + torch.tensor(1.0), {}

        with checkpoint_inputs("data v1"):
            train_loop(tiny_model, step_loss, cfg, tmp_path / "ckpt", "t", counters={"work": counter})
        return counter

    with pytest.raises(Killed):
        trained(kill_at=5)
    assert trained(kill_at=None).forward_tokens == 60  # 4 steps restored from the checkpoint + 2 run now


# --- 6. SIGTERM, stale RUNNING runs, an orphaned stage, the pods' grace period --------------------------------------

SIGTERM_DRIVER = """
import sys, time
from pathlib import Path
import torch
from latlab.models.loading import build_toy_model
from latlab.training.loop import train_loop
from latlab.world.generator import generate_world
from latlab.world.tokenizer import build_tokenizer
from stages.common import run_stage, train_and_register
from tests.conftest import TEXT_FIELDS, TINY_ARCH, TINY_WORLD

world = generate_world(TINY_WORLD, 0)
tokenizer = build_tokenizer(r[f] for rs in world.values() for r in rs for f in TEXT_FIELDS if f in r)

def body(params):
    model = build_toy_model(TINY_ARCH, tokenizer, 0)

    def step_loss(model, step):
        Path("training").touch()
        time.sleep(0.2)
        return sum(p.square().sum() for p in model.parameters()) * 1e-3, {}

    def train(checkpoint_dir, on_log):
        return train_loop(model, step_loss, params.refusal, checkpoint_dir, "refusal", on_log), {}

    train_and_register(params, "refusal", "rt", model, tokenizer, train, params.refusal, {})

run_stage("refusal", body)
"""


def wait_for(path: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def test_sigterm_saves_a_checkpoint_and_marks_the_run_killed(tmp_path):
    write_params(tmp_path, {**file_tracking(tmp_path), "refusal": {"steps": 500, "checkpoint_every": 1000}})
    (tmp_path / "driver.py").write_text(SIGTERM_DRIVER)
    with subprocess.Popen([sys.executable, "driver.py"], cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        try:
            wait_for(tmp_path / "training", 120)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "SIGTERM: stopping after the current training step" in err
    state = json.loads((tmp_path / "checkpoints/refusal/state.json").read_text())
    assert 0 < state["step"] < 500
    assert run_statuses(tmp_path) == {"refusal": ["KILLED"]}


def test_next_run_of_a_stage_marks_its_stale_running_runs_killed(workdir):
    from mlflow.tracking import MlflowClient

    from latlab import tracking
    from latlab.tracking import stage_run

    workspace_tag, pid_tag = getattr(tracking, "WORKSPACE_TAG", "workspace"), getattr(tracking, "PID_TAG", "pid")
    here = tracking.workspace() if hasattr(tracking, "workspace") else "here"
    cfg = with_params(file_tracking(workdir)).tracking
    with stage_run(cfg, "validate"):
        pass
    client = MlflowClient(tracking_uri=cfg.uri)
    experiment = client.get_experiment_by_name(cfg.experiment).experiment_id
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = client.create_run(experiment, run_name="validate", tags={
        "dvc_stage": "validate", workspace_tag: here, pid_tag: str(dead.pid)}).info.run_id  # SIGKILLed
    elsewhere = client.create_run(experiment, run_name="validate", tags={
        "dvc_stage": "validate", workspace_tag: "pod-7:/app", pid_tag: "1"}).info.run_id  # a parallel sweep pod
    with stage_run(cfg, "validate"):
        pass
    assert client.get_run(stale).info.status == "KILLED"
    assert client.get_run(elsewhere).info.status == "RUNNING"
    assert sorted(run_statuses(workdir)["validate"]) == ["FINISHED", "FINISHED", "KILLED", "RUNNING"]


ORPHAN_PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", '''
import os, time
from pathlib import Path
from stages.common import run_stage
def body(params):
    Path("child.pid").write_text(str(os.getpid()))
    time.sleep(120)
run_stage("slow", body)
'''])
time.sleep(600)
"""


def test_a_stage_stops_when_its_dvc_parent_is_killed(tmp_path):
    write_params(tmp_path, file_tracking(tmp_path))
    (tmp_path / "parent.py").write_text(ORPHAN_PARENT)
    parent = subprocess.Popen([sys.executable, "parent.py"], cwd=tmp_path, env=child_env())
    try:
        wait_for(tmp_path / "child.pid", 120)
        child = int((tmp_path / "child.pid").read_text())
        parent.kill()  # SIGKILL: dvc gone without a word, as when only the dvc process is signalled
        parent.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and Path(f"/proc/{child}").exists() and \
                "zombie" not in Path(f"/proc/{child}/status").read_text():
            time.sleep(0.2)
        alive = Path(f"/proc/{child}").exists() and "zombie" not in Path(f"/proc/{child}/status").read_text()
    finally:
        parent.kill()
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the stage kept running after its parent died"


PASSING_DRIVER = """
import sys
from flows.proc import run_passing_sigterm
child = '''
import signal, sys, time
from pathlib import Path
def stop(signum, frame):
    time.sleep(0.5)  # a checkpoint being written
    Path("child_stopped").touch()
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
Path("child_started").touch()
time.sleep(120)
'''
run_passing_sigterm([sys.executable, "-c", child])
"""


def test_the_flow_passes_sigterm_on_to_dvc_and_waits_for_it(tmp_path):
    (tmp_path / "driver.py").write_text(PASSING_DRIVER)
    with subprocess.Popen([sys.executable, "driver.py"], cwd=tmp_path, env=child_env()) as proc:
        try:
            wait_for(tmp_path / "child_started", 60)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 143 and (tmp_path / "child_stopped").exists()


def test_pods_get_a_termination_grace_period_long_enough_for_a_checkpoint():
    from tests.test_k8s_manifests import prefect_deployments, render_job

    for deployment in ("stage-lat", "stage-gpu", "nightly"):
        job_variables = prefect_deployments()[deployment]["work_pool"]["job_variables"]
        pod = render_job(job_variables)["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= 300, deployment


# --- 7. compare reads the declared model versions -----------------------------------------------------------------

def test_compare_lists_exactly_the_declared_versions(workdir):
    from mlflow.tracking import MlflowClient

    from latlab.tracking import MODEL_CARD
    from stages.compare import compare, compared_roles

    raw = deep_merge(raw_params(), {**file_tracking(workdir), "evaluate": {"models": ["base", "rt"]}})
    raw["unlearn"] = {"ga": raw["unlearn"]["ga"]}
    raw["backdoor_removal"] = {"sft": raw["backdoor_removal"]["sft"]}
    params = parse_params(raw)
    roles = compared_roles(params)
    assert roles == ["base", "rt", "oracle", "unlearn/ga", "backdoor_removal/sft"]
    client = MlflowClient(tracking_uri=params.tracking.uri)
    experiment = client.create_experiment("latlab")
    for role in roles:
        name = "latlab-" + role.replace("/", "-")
        client.create_registered_model(name)
        run = client.create_run(experiment).info.run_id
        version = client.create_model_version(name, source=str(workdir), run_id=run).version
        model_id = client.create_logged_model(experiment, name=role.replace("/", "-")).model_id
        client.log_metric(run, "harmful_asr", 0.5, model_id=model_id)  # what evaluate links to the logged model
        client.set_terminated(run)
        (workdir / "models" / role).mkdir(parents=True)
        (workdir / "models" / role / MODEL_CARD).write_text(json.dumps(
            {"role": role, "registered_name": name, "run_id": run, "version": version, "model_id": model_id,
             "tags": {}}))
    # what later or other runs registered: a newer base (e.g. a sweep) and an undeclared model
    client.create_model_version("latlab-base", source=str(workdir))
    client.create_registered_model("latlab-extra")
    client.create_model_version("latlab-extra", source=str(workdir))
    compare(params)
    rows = json.loads((workdir / "reports/compare.json").read_text())
    assert [(r["model"], r["version"]) for r in rows] == [
        ("latlab-base", "1"), ("latlab-rt", "1"), ("latlab-oracle", "1"), ("latlab-unlearn-ga", "1"),
        ("latlab-backdoor_removal-sft", "1")]
    assert rows[0]["metrics"] == {"harmful_asr": 0.5}


def test_compare_declares_every_model_it_reads_as_a_dvc_dependency():
    from latlab.config import load_params
    from stages.compare import compared_roles

    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["compare"]
    for role in compared_roles(load_params(REPO / "params.yaml")):
        assert any(f"models/{role}" == dep or f"models/{role}".startswith(f"{dep}/") for dep in stage["deps"]), role
    assert {"evaluate.models", "unlearn", "backdoor_removal"} <= set(stage["params"])


# --- 8. a failed data gate ends its MLflow run FAILED ------------------------------------------------------------

def test_failed_validation_gate_marks_its_run_failed(workdir, capsys, tiny_world):
    from stages.common import run_stage
    from stages.validate import validate

    write_params(workdir, {**file_tracking(workdir), "validate": {"min_rows_per_split": 100000}})
    write_world(workdir, tiny_world)
    with pytest.raises(SystemExit) as stopped:
        run_stage("validate", validate)
    assert stopped.value.code == 2
    assert run_statuses(workdir) == {"validate": ["FAILED"]}


# --- 9. every override source validates against the schema ------------------------------------------------------

def _valid(raw: dict, source: str) -> None:
    from latlab.check import model_problems

    params = parse_params(raw, source)  # ConfigError names the key
    problems = model_problems(params, source, check_source=False)  # the model may be absent here (SmolLM2)
    assert not problems, "\n".join(problems)


def test_every_profile_is_valid():
    from latlab.profiles import merged_profile

    for profile in sorted((REPO / "profiles").glob("*.yaml")):
        _valid(merged_profile(profile, REPO / "params.yaml"), str(profile.relative_to(REPO)))


def test_every_sweep_variant_is_valid():
    """profiles/sweeps/*.yaml (scripts/lat_sweep.py): each variant overrides `lat` of its profile run."""
    from latlab.profiles import merged_profile

    for sweep_file in sorted((REPO / "profiles/sweeps").glob("*.yaml")):
        sweep = yaml.safe_load(sweep_file.read_text())
        profile = REPO / "profiles" / f"{Path(sweep['workdir']).name}.yaml"
        base = merged_profile(profile, REPO / "params.yaml") if profile.exists() else raw_params()
        for name, overrides in sweep["variants"].items():
            _valid({**base, "lat": {**base["lat"], **overrides}}, f"{sweep_file.name} variant {name}")


def test_every_deployment_s_parameters_are_valid():
    """prefect.yaml: the Kubernetes sweep grid (every point), profiles, overrides and stage names."""
    from flows.cluster import sweep_points
    from flows.dag import stage_parents
    from latlab.profiles import merged_profile, with_overrides

    stages = set(stage_parents(REPO))
    stages |= {s.split("@")[0] for s in stages}
    for deployment in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]:
        parameters = deployment.get("parameters") or {}
        base = merged_profile(REPO / parameters["profile"], REPO / "params.yaml") if parameters.get("profile") \
            else raw_params()
        for point in sweep_points(parameters.get("grid") or {}) + [parameters.get("overrides") or {}]:
            try:
                _valid(with_overrides(base, point), f"prefect.yaml {deployment['name']} {point}")
            except ConfigError as err:
                pytest.fail(f"prefect.yaml deployment {deployment['name']}: {err}")
        if "stage" in parameters:
            assert parameters["stage"] in stages, deployment["name"]


def test_documented_dvc_exp_run_overrides_are_valid():
    from latlab.check import parse_override
    from latlab.profiles import with_overrides

    documents = [REPO / "README.md", *(REPO / "docs").glob("*.md")]
    found = 0
    for document in documents:
        for command in re.findall(r"dvc exp run((?: -S (?:'[^']*'|\S+))+)", document.read_text()):
            overrides = dict(parse_override(arg.strip("'")) for arg in re.findall(r"-S ('[^']*'|\S+)", command))
            _valid(with_overrides(raw_params(), overrides), f"{document.name}: dvc exp run{command}")
            found += 1
    assert found, "no `dvc exp run -S` example found in the docs"


def test_a_misspelled_override_is_named():
    from latlab.profiles import with_overrides

    with pytest.raises(ConfigError, match=r"override lat.layer: unknown key \(did you mean lat.layers\?\)"):
        with_overrides(raw_params(), {"lat.layer": [1]})


# --- 10. a bad stage name is refused before Prefect starts ---------------------------------------------------------

def test_pipeline_refuses_an_unknown_stage_before_prefect_starts(monkeypatch, capsys):
    import flows.pipeline as pipeline

    monkeypatch.chdir(REPO)

    def no_flow(**kwargs):
        raise AssertionError("the Prefect flow started")

    monkeypatch.setattr(pipeline, "latlab_pipeline", no_flow)
    err = one_line_exit(capsys, lambda: pipeline.main(["--stages", "lat_untargetted"]))
    assert err.startswith("error: unknown stage(s) ['lat_untargetted'] (did you mean lat_untargeted?)"), err


# --- the README lists what a user can see ------------------------------------------------------------------------

def test_readme_troubleshooting_lists_the_messages():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    for phrase in ("unknown key (did you mean", "does not exist: the model has", "not valid JSON",
                   "has no *.safetensors weights", "has weights but no config.json", "but no tokenizer",
                   "not in the local Hugging Face cache", "starting fresh", "resumed from checkpoint",
                   "SIGTERM", "KILLED", "unknown stage(s)", "no model card", "latlab.check"):
        assert phrase in section, phrase


@pytest.mark.slow
def test_plain_dvc_repro_with_bad_params_keeps_earlier_results(tmp_path):
    """Finding 1 through plain `dvc repro` (no `make check`): the `check` stage, upstream of every other stage,
    refuses a bad params.yaml before DVC deletes `generate`'s outputs; a good change reruns nothing by itself."""
    import shutil

    for name in ("src", "stages", "dvc.yaml", "params.yaml"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, tmp_path / name)
    dvc = Path(sys.executable).parent / "dvc"
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **offline_settings(),
           "DVC_SITE_CACHE_DIR": str(tmp_path / "site-cache"),
           "PYTHONPATH": f"{tmp_path / 'src'}{os.pathsep}{tmp_path}",
           "PATH": f"{dvc.parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    assert run("git", "init", "-q").returncode == 0 and run(str(dvc), "init", "-q").returncode == 0
    done = run(str(dvc), "repro", "generate")
    assert done.returncode == 0, done.stdout + done.stderr
    world = {path.name: path.read_bytes() for path in (tmp_path / "data/world").iterdir()}
    assert world

    good = (tmp_path / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(good.replace("\nworld:\n", "\nworld:\n  bogus_key: 1\n", 1))
    done = run(str(dvc), "repro", "generate")
    assert done.returncode != 0
    assert "world.bogus_key: unknown key" in done.stdout + done.stderr
    assert {path.name: path.read_bytes() for path in (tmp_path / "data/world").iterdir()} == world

    raw = yaml.safe_load(good)
    raw["lat"]["epsilon"] = raw["lat"]["epsilon"] * 2  # valid, and not a param of `generate`
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    done = run(str(dvc), "repro", "generate")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Running stage 'check'" in done.stdout and "Stage 'generate' didn't change" in done.stdout
