"""flows.repro, the demo's runner, on a throwaway DVC repo of shell stages: independent stages overlap, dvc.lock
ends as `dvc repro` would leave it (dvc status clean, nothing to rerun), only what changed and its downstream rerun,
and a failure stops new stages, keeps finished ones committed and names the stage."""

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows.repro import repro

PYTHON = sys.executable


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True, check=False)


def write_repo(repo: Path, fail: str = "") -> None:
    """check -> a -> {b, c} -> d; b and c sleep so that run side by side they overlap; a keeps check's first line."""
    stage = "{name}:\n    cmd: {cmd}\n    deps: [{deps}]\n    outs: [{out}]\n"
    cmds = {
        "check": ("sh -c 'cat in.txt > check.txt'", "in.txt", "check.txt"),
        "a": ("sh -c 'head -1 check.txt > a.txt'", "check.txt", "a.txt"),
        "b": ("sh -c 'sleep 1.5; cat a.txt b.in > b.txt'", "a.txt, b.in", "b.txt"),
        "c": ("sh -c 'sleep 1.5; cat a.txt > c.txt" + ("; exit 3" if fail == "c" else "") + "'", "a.txt", "c.txt"),
        "d": ("sh -c 'cat b.txt c.txt > d.txt'", "b.txt, c.txt", "d.txt"),
    }
    (repo / "dvc.yaml").write_text("stages:\n" + textwrap.indent(
        "".join(stage.format(name=n, cmd=json.dumps(c), deps=d, out=o) for n, (c, d, o) in cmds.items()), "  "))


@pytest.fixture
def repo(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    assert dvc(tmp_path, "init", "-q").returncode == 0
    (tmp_path / "in.txt").write_text("x\n")
    (tmp_path / "b.in").write_text("b\n")
    write_repo(tmp_path)
    return tmp_path


def test_independent_stages_overlap_and_dvc_lock_ends_clean(repo, monkeypatch):
    import flows.repro

    statuses = []  # `dvc status` takes ~8-20 s on the default pipeline: once per run, not once per stage
    real_out_of_date = flows.repro.out_of_date
    monkeypatch.setattr(flows.repro, "out_of_date", lambda *a: statuses.append(1) or real_out_of_date(*a))
    ran = repro(repo, jobs=2)
    assert len(statuses) == 1
    assert ran == ["check", "a", "b", "c", "d"]
    times = json.loads((repo / "logs/repro_times.json").read_text())["stages"]
    assert times["b"]["start_s"] < times["c"]["end_s"] and times["c"]["start_s"] < times["b"]["end_s"]
    assert times["d"]["start_s"] >= max(times["b"]["end_s"], times["c"]["end_s"])
    assert (repo / "d.txt").read_text() == "x\nb\nx\n"
    status = dvc(repo, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout) == {}, status.stdout
    dry = dvc(repo, "repro", "--dry").stdout  # what `dvc repro` would run now: nothing
    assert "Running stage" not in dry, dry
    assert repro(repo, jobs=2) == []  # nothing out of date

    (repo / "b.in").write_text("B\n")  # only b and what is downstream of it
    assert repro(repo, jobs=2) == ["b", "d"]
    assert (repo / "d.txt").read_text() == "x\nB\nx\n"
    assert json.loads(dvc(repo, "status", "--json").stdout) == {}

    # check and a rerun, a's output is the same (first line), so b, c, d are up to date as `dvc repro` finds them
    # (before: a params.yaml edit reran all 41 stages of the default pipeline, as everything is below the check)
    (repo / "in.txt").write_text("x\nsecond line\n")
    assert repro(repo, jobs=2) == ["check", "a"]
    assert json.loads(dvc(repo, "status", "--json").stdout) == {}


def test_a_failed_stage_stops_the_run_and_keeps_what_finished(repo):
    write_repo(repo, fail="c")
    with pytest.raises(RuntimeError, match=r"stage\(s\) c failed.*not run: d"):
        repro(repo, jobs=2)
    assert not (repo / "d.txt").exists()
    status = json.loads(dvc(repo, "status", "--json").stdout)
    assert set(status) == {"c", "d"}, status  # check, a and b are committed
    assert (repo / "logs/stages/c.log").exists()  # the path the error names


def test_of_the_stages_ready_the_head_of_the_longest_chain_starts_first():
    """check -> {spawrious (short branch), base -> refusal -> lat (long)}: base leads, by stage count on a first run
    and by the last run's seconds afterwards, where a slow short branch can lead instead."""
    from flows.repro import critical_path

    parents = {"check": [], "spawrious": ["check"], "base": ["check"], "refusal": ["base"], "lat": ["refusal"]}
    chain = critical_path(parents, {})
    assert chain["base"] == 3 and chain["spawrious"] == 1 and chain["check"] == 4
    chain = critical_path(parents, {"check": 1, "spawrious": 500, "base": 100, "refusal": 50, "lat": 50})
    assert chain["spawrious"] == 500 > chain["base"] == 200
    chain = critical_path(parents, {"base": 100, "refusal": 50})  # unknown stages count as the median known (100)
    assert chain["base"] == 250 and chain["spawrious"] == 100


def test_a_fresh_clone_schedules_by_the_committed_demo_timing(tmp_path):
    """No logs/repro_times.json in a fresh clone: the stage times of benchmarks/results/demo_time.json are the
    estimates (without them base and oracle, the two longest stages, started after the Spawrious branch)."""
    from flows.repro import DEMO_TIMES, TIMES, last_times

    assert last_times(tmp_path) == {}
    (tmp_path / DEMO_TIMES).parent.mkdir(parents=True)
    (tmp_path / DEMO_TIMES).write_text(json.dumps({"stages": [{"stage": "base", "run_s": 240, "process_s": 256.6},
                                                              {"stage": "oracle", "run_s": 245}]}))
    assert last_times(tmp_path) == {"base": 256.6}
    (tmp_path / TIMES).parent.mkdir(parents=True)
    (tmp_path / TIMES).write_text(json.dumps({"durations_s": {"base": 100.0}}))  # this checkout's last run wins
    assert last_times(tmp_path) == {"base": 100.0}


STAGE_MODULE = '''
import os, sys
from pathlib import Path
import heavy  # the fork server imported it: not imported again here
if __name__ == "__main__":
    out = sys.argv[1]
    Path(out).write_text(f"{__name__} {os.getcwd()} {os.environ.get('OMP_NUM_THREADS')} {sys.argv[1:]}\\n")
    print(f"[{out}] done: wrote {out}")
    if len(sys.argv) > 2:
        raise SystemExit(int(sys.argv[2]))
'''


def python_repo(repo: Path, fail: bool = False) -> None:
    """check -> {a, b}: `python -m st <out>` stages; `heavy` counts its imports in imports.log."""
    (repo / "heavy.py").write_text("from pathlib import Path\n"
                                   "with (Path(__file__).parent / 'imports.log').open('a') as f: f.write('1\\n')\n")
    (repo / "st.py").write_text(STAGE_MODULE)
    stage = "{name}:\n    cmd: python -m st {name}.txt{code}\n    deps: [{deps}]\n    outs: [{name}.txt]\n"
    (repo / "dvc.yaml").write_text("stages:\n" + textwrap.indent("".join(
        stage.format(name=n, deps=d, code=" 3" if fail and n == "b" else "")
        for n, d in (("check", "in.txt, st.py"), ("a", "check.txt"), ("b", "check.txt"))), "  "))


def test_python_stages_run_in_children_of_a_fork_server_that_imported_their_modules_once(repo):
    """`python -m` stages start in a pre-warmed child (flows.launch): the preloaded module is imported once for the
    whole run, not once per stage, and each stage still runs as `__main__` in the repo with its argv and thread
    count; dvc.lock ends as `dvc repro` would leave it."""
    python_repo(repo)
    assert repro(repo, jobs=2, preload=("heavy",)) == ["check", "a", "b"]
    assert (repo / "imports.log").read_text() == "1\n"  # by the fork server; each of 3 stages imports it
    assert (repo / "a.txt").read_text() == f"__main__ {repo} 1 ['a.txt']\n"
    assert "[a.txt] done: wrote a.txt" in (repo / "logs/stages/a.log").read_text()
    assert json.loads(dvc(repo, "status", "--json").stdout) == {}

    python_repo(repo, fail=True)  # a SystemExit's code is the stage's exit status
    with pytest.raises(RuntimeError, match=r"stage\(s\) b failed"):
        repro(repo, jobs=1, preload=("heavy",))
    assert set(json.loads(dvc(repo, "status", "--json").stdout)) == {"b"}


def test_launch_reports_exit_status_traceback_and_signal_like_a_process(tmp_path):
    from flows.launch import python_module, run_command

    (tmp_path / "boom.py").write_text("import os, sys\nif sys.argv[1] == 'raise': raise ValueError('no such key: x')\n"
                                      "os.kill(os.getpid(), 9)\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    log = tmp_path / "boom.log"
    assert run_command("python -m boom raise", tmp_path, env, log, preload=("json",)) == 1
    assert "ValueError: no such key: x" in log.read_text()
    assert run_command("python -m boom kill", tmp_path, env, log, preload=("json",)) == 128 + 9
    assert run_command("sh -c 'echo plain; exit 4'", tmp_path, env, log) == 4  # not `python -m`: a subprocess
    assert log.read_text() == "plain\n"
    # a shell line, as DVC runs it (the toy pipeline of tests/test_flow.py made a folder named `&&` before)
    assert run_command("python -m boom raise || echo rescued > out.txt && echo done", tmp_path, env, log) == 0
    assert (tmp_path / "out.txt").read_text() == "rescued\n" and log.read_text().strip().endswith("done")
    assert python_module("python -m stages.lat --method ga") == ("stages.lat", ["--method", "ga"])
    assert python_module("python -m stages.lat > out.txt") is None and python_module("OMP=1 python -m x") is None


def test_a_slow_commit_does_not_hold_the_next_stage_and_commits_are_batched(repo, monkeypatch):
    """`dvc commit` parses and rewrites the whole dvc.lock (~4 s on the default pipeline): it runs beside the next
    stages, and the stages that finish meanwhile are committed in one call."""
    import flows.repro

    calls = []
    real_commit = flows.repro.commit

    def slow_commit(stages, where):
        calls.append(list(stages))
        time.sleep(3)
        real_commit(stages, where)

    monkeypatch.setattr(flows.repro, "commit", slow_commit)
    assert repro(repo, jobs=2) == ["check", "a", "b", "c", "d"]
    times = json.loads((repo / "logs/repro_times.json").read_text())["stages"]
    assert times["b"]["start_s"] < times["a"]["end_s"] + 2.5  # not after a's 3-s commit
    assert sorted(s for batch in calls for s in batch) == ["a", "b", "c", "check", "d"]
    assert len(calls) < 5, calls
    assert json.loads(dvc(repo, "status", "--json").stdout) == {}
