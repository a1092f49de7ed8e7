"""Run a dvc.yaml command the way DVC would, without paying Python's start-up in every stage.

A stage process spends ~5-7 s importing torch, transformers, MLflow and latlab before its first line of work
(measured with `python -X importtime -c "import stages.generate"` and cProfile: 39 stages x ~12 s of start-up =
500 s of the 2180 s of stage processes in `make demo`). A `python -m <module> [args]` command therefore runs in a
child of a fork server that imported those modules once (the standard library's multiprocessing "forkserver" with
`set_forkserver_preload`): the child starts with them loaded, then does what `python -m` does (runpy, `__name__ ==
"__main__"`, sys.argv) in the stage's working directory and environment, its stdout and stderr in the log. Any
other command (a shell line, another interpreter) runs in a shell, as DVC would run it.

Same semantics as a fresh process for the stage: its own pid, working directory, environment, exit code (a
SystemExit's code; 1 and a traceback for an uncaught exception; 128 + N when killed by signal N), atexit handlers
run at its end. The fork server is single-threaded and holds no torch thread pool (importing torch starts none), so
forking it is safe; the OpenMP thread count is read when torch's OpenMP runtime loads, so the server is started
with the stage's OMP_NUM_THREADS / MKL_NUM_THREADS. When the runner dies the server exits, and a stage gets SIGTERM
(stages/common.py asks the kernel for it when its parent dies), as before.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import re
import runpy
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

# imported once by the fork server: every stage module (they import torch, transformers, MLflow and latlab) and
# what stages import inside functions (MLflow's SQL store, scikit-learn probes, Great Expectations, TransformerLens);
# none of them starts a thread on import (checked: threading.active_count() stays 1)
PRELOAD = (*(f"stages.{path.stem}" for path in sorted((Path(__file__).resolve().parents[1] / "stages").glob("*.py"))
             if path.stem != "__init__"),
           "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store", "mlflow.pytorch",
           "mlflow.transformers", "sklearn.linear_model", "sklearn.metrics", "sklearn.model_selection",
           "great_expectations", "transformer_lens.model_bridge.sources")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_server_lock = threading.Lock()
_server_env: dict[str, str] | None = None  # the environment the running fork server was started with


def python_module(cmd: str) -> tuple[str, list[str]] | None:
    """`python -m <module> [args]` (or python3) -> (module, args); None for any other command, and for a shell line
    (`python -m a && b`, `python -m a > f`: the shell runs it)."""
    lexer = shlex.shlex(cmd, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    argv = list(lexer)
    if any(token and set(token) <= set("();<>|&") for token in argv):
        return None
    if len(argv) >= 3 and argv[0] in ("python", "python3") and argv[1] == "-m":
        return argv[2], argv[3:]
    return None


@contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def start_server(env: dict[str, str], preload: tuple[str, ...]):
    """The forkserver context, its server started once per process with `env` (sys.path and thread counts) and
    `preload`; a later call with other thread counts or preload list restarts it."""
    global _server_env
    from multiprocessing import forkserver

    ctx = multiprocessing.get_context("forkserver")
    key = {**{k: env.get(k, "") for k in (*THREAD_VARS, "PYTHONPATH")}, "preload": ",".join(preload)}
    with _server_lock:
        if _server_env is not None and _server_env != key:
            forkserver._forkserver._stop()  # the only way to change a running server's preload and environment
        if _server_env != key:
            ctx.set_forkserver_preload(list(preload))
            with _environ(env):  # the server process inherits this environment (and its cwd, for `-m` imports)
                forkserver.ensure_running()
            _server_env = key
    return ctx


def _run_module(module: str, args: list[str], cwd: str, env: dict[str, str], log: str) -> None:
    """In the forked child: `python -m module args` in `cwd` with `env`, output to `log`; exits with its status."""
    code = 1
    try:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        # the child was handed its starter's sys.path (multiprocessing's spawn preparation): make it a fresh
        # `python -m`'s, the working directory then PYTHONPATH first
        first = [cwd, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
        sys.path[:] = list(dict.fromkeys([*first, *sys.path]))
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        sys.stdout.reconfigure(line_buffering=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if "torch" in sys.modules and env.get("OMP_NUM_THREADS", "").isdigit():
            sys.modules["torch"].set_num_threads(int(env["OMP_NUM_THREADS"]))
        sys.argv = [module, *args]
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as stop:
            if stop.code is None or isinstance(stop.code, int):
                code = stop.code or 0
            else:
                print(stop.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - reported like the interpreter reports it, exit status 1
            traceback.print_exc()
        atexit._run_exitfuncs()  # what the interpreter runs at exit (MLflow, tqdm, logging)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def follow(log: Path, running: Callable[[], bool], emit: Callable[[str], None]) -> None:
    """Pass each line `log` gains to `emit` while `running()` (tqdm's carriage returns end a line too, so a long
    stage shows its progress bar live), then the rest."""
    pending = b""
    with log.open("rb") as source:
        while True:
            alive = running()  # read after this check: nothing written before the process ended is missed
            chunk = source.read()
            *lines, pending = re.split(rb"[\r\n]", pending + chunk)
            for line in lines:
                if line.strip():
                    emit(line.decode("utf-8", errors="replace").strip()[-500:])
            if not alive:
                break
            if not chunk:
                time.sleep(0.2)
    if pending.strip():
        emit(pending.decode("utf-8", errors="replace").strip()[-500:])


def run_command(cmd: str, cwd: Path | str, env: dict[str, str], log: Path, preload: tuple[str, ...] | None = PRELOAD,
                emit: Callable[[str], None] | None = None) -> int:
    """Run dvc.yaml command `cmd` in `cwd` with environment `env`, stdout and stderr to `log` (truncated first) and,
    line by line as they come, to `emit`; returns its exit status (128 + N when killed by signal N). `python -m`
    commands run in a pre-warmed child when `preload` is not None (modules the fork server imports; one that fails
    to import is skipped)."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"")
    target = python_module(cmd)
    if target is None or preload is None:
        with log.open("ab") as sink:
            # in a shell, as DVC runs a command: `a && b > f` is a shell line, not argv
            proc = subprocess.Popen(cmd, shell=True, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)
        if emit is not None:
            follow(log, lambda: proc.poll() is None, emit)
        return proc.wait()
    child = start_server(env, preload).Process(target=_run_module, args=(*target, str(Path(cwd).resolve()), env,
                                                                           str(log.resolve())))
    child.start()
    if emit is not None:
        follow(log, child.is_alive, emit)
    child.join()
    return child.exitcode if child.exitcode >= 0 else 128 - child.exitcode
