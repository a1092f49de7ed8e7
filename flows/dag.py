"""The stage DAG of dvc.yaml, from DVC's own graph (foreach/matrix stages expanded to `name@item`), shared by the
local flow (flows/pipeline.py) and the cluster flow (flows/cluster.py)."""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from latlab.env import interpreter_env

# dvc.yaml's first stage (stages/check.py): every other stage descends from it, so every run includes it
CHECK_STAGE = "check"


def stage_parents(cwd: Path) -> dict[str, list[str]]:
    """dvc.yaml stage -> the stages (or `.dvc` files) producing its dependencies, from DVC's own graph.

    Names are DVC targets relative to `cwd` (`stage`, `sub/dvc.yaml:stage`, `data/raw.dvc`), usable with pull/push.
    """
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    def address(stage) -> str:
        path = os.path.relpath(stage.path, cwd)
        if not isinstance(stage, PipelineStage):
            return path
        return stage.name if path == "dvc.yaml" else f"{path}:{stage.name}"

    with Repo(str(cwd)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages whose outputs it depends on
        return {
            address(stage): sorted(address(p) for p in graph.successors(stage))
            for stage in graph.nodes
            if isinstance(stage, PipelineStage)
        }


def execution_waves(parents: dict[str, list[str]], selected: Iterable[str] | None = None) -> list[list[str]]:
    """Stages grouped into waves: every stage's parents are in an earlier wave, so a wave's stages can run at once.

    `selected` restricts the run to those stages (and the params check stage, `CHECK_STAGE`). Parents outside the
    run (unselected stages, `.dvc` files) are taken as done: their outputs must already be in the remote.
    """
    chosen = set(parents) if selected is None else set(selected) | ({CHECK_STAGE} & set(parents))
    unknown = chosen - set(parents)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; dvc.yaml has {sorted(parents)}")
    waves: list[list[str]] = []
    done: set[str] = set()
    while len(done) < len(chosen):
        # the check stage runs alone first: it must refuse bad params before any stage's outputs are deleted
        first = [CHECK_STAGE] if CHECK_STAGE in chosen - done else []
        wave = first or sorted(s for s in chosen - done if all(p in done or p not in chosen for p in parents[s]))
        if not wave:
            raise ValueError(f"dependency cycle among {sorted(chosen - done)}")
        waves.append(wave)
        done.update(wave)
    return waves


def stage_order(cwd: Path = Path("."), only: list[str] | None = None) -> list[str]:
    """Stages in dependency order (of the whole DAG, so transitive order holds within a selection). `only` keeps
    the named stages (and `CHECK_STAGE`); a foreach/matrix group name keeps all its items."""
    parents = stage_parents(cwd)
    order = [stage for wave in execution_waves(parents) for stage in wave]
    if only is None:
        return order
    groups = {s.split("@", 1)[0] for s in parents}
    unknown = sorted(set(only) - set(parents) - groups)
    if unknown:
        close = [match for name in unknown for match in difflib.get_close_matches(name, set(parents) | groups, n=1)]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown stage(s) {unknown}{hint}; dvc.yaml has {sorted(parents)}")
    return [s for s in order if s in only or s.split("@", 1)[0] in only or s == CHECK_STAGE]


def stage_env(repo: str) -> dict[str, str]:
    """The environment a dvc.yaml command runs in outside `make`: the repo importable (`stages`), and `python` is
    this interpreter (no activated venv needed)."""
    return interpreter_env({**os.environ, "PYTHONPATH": os.pathsep.join(
        [repo, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)})


def stage_commands(cwd: Path) -> dict[str, str]:
    """dvc.yaml stage (foreach/matrix items expanded) -> its command, as DVC resolves it."""
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(cwd)) as repo:
        return {stage.name: stage.cmd for stage in repo.index.stages
                if isinstance(stage, PipelineStage) and os.path.relpath(stage.path, cwd) == "dvc.yaml"}


def stage_outputs(repo: Path) -> dict[str, list[Path]]:
    """dvc.yaml stage -> its output paths (what DVC removes before running the command; no stage here persists)."""
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(repo)) as dvc_repo:
        return {stage.name: [Path(out.fs_path) for out in stage.outs if not out.persist]
                for stage in dvc_repo.index.stages if isinstance(stage, PipelineStage)}


def remove(paths: list[Path]) -> None:
    """Delete each path (a folder with what it holds; a link, not its target); a missing one is skipped."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


@contextmanager
def resolved_with(params: Path, repo: Path = Path(".")) -> Iterator[Path]:
    """A throwaway DVC repo holding `repo`'s dvc.yaml beside the given params.yaml: `stage_order` and
    `stage_commands` on it expand foreach/matrix items and `${...}` against the params a run really uses. A profile
    or a study seed's params may change a method table or the Spawrious split list; resolving against the repo's
    own params.yaml would run the repo's items with the profile's data."""
    from dvc.repo import Repo

    with tempfile.TemporaryDirectory(prefix="latlab-dag-") as tmp:
        shutil.copy(repo / "dvc.yaml", Path(tmp) / "dvc.yaml")
        shutil.copy(params, Path(tmp) / "params.yaml")
        Repo.init(tmp, no_scm=True).close()
        yield Path(tmp)


def preflight(repo: Path, stages: list[str] | None, profile: Path | None = None) -> list[str]:
    """What must stop a run before DVC deletes any output, one line each: the params check of params.yaml (+ a
    profile; latlab.check; a DVC repo without params.yaml has none) and unknown stage names."""
    from latlab.check import check

    problems = check(repo / "params.yaml", profile) if (repo / "params.yaml").exists() else []
    try:
        stage_order(repo, stages)
    except ValueError as err:
        problems.append(str(err))
    return problems


def clear_stage_checkpoints(repo: Path, stages: Iterable[str]) -> list[Path]:
    """After `dvc repro` succeeded for `stages`, their outputs are current, whether the stage ran or DVC restored them
    from its run cache; a training checkpoint of theirs (checkpoints/<stage>, `@` -> `/`, with its .old, .tmp and
    sidecar files) is then stale: remove it. Returns what was removed."""
    removed = []
    for stage in stages:
        folder = repo / "checkpoints" / stage.replace("@", "/", 1)
        for path in [folder, *folder.parent.glob(f"{folder.name}.*")]:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            else:
                continue
            removed.append(path)
    return removed
