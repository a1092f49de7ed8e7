"""The stage DAG of dvc.yaml, from DVC's own graph (foreach/matrix stages expanded to `name@item`), shared by the
local flow (flows/pipeline.py) and the cluster flow (flows/cluster.py)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


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

    `selected` restricts the run to those stages. Parents outside the run (unselected stages, `.dvc` files) are
    taken as done: their outputs must already be in the remote.
    """
    chosen = set(parents) if selected is None else set(selected)
    unknown = chosen - set(parents)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; dvc.yaml has {sorted(parents)}")
    waves: list[list[str]] = []
    done: set[str] = set()
    while len(done) < len(chosen):
        wave = sorted(s for s in chosen - done if all(p in done or p not in chosen for p in parents[s]))
        if not wave:
            raise ValueError(f"dependency cycle among {sorted(chosen - done)}")
        waves.append(wave)
        done.update(wave)
    return waves


def stage_order(cwd: Path = Path("."), only: list[str] | None = None) -> list[str]:
    """Stages in dependency order (of the whole DAG, so transitive order holds within a selection). `only` keeps
    the named stages; a foreach/matrix group name keeps all its items."""
    parents = stage_parents(cwd)
    order = [stage for wave in execution_waves(parents) for stage in wave]
    if only is None:
        return order
    groups = {s.split("@", 1)[0] for s in parents}
    unknown = sorted(set(only) - set(parents) - groups)
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {sorted(parents)}")
    return [s for s in order if s in only or s.split("@", 1)[0] in only]


def stage_commands(cwd: Path) -> dict[str, str]:
    """dvc.yaml stage (foreach/matrix items expanded) -> its command, as DVC resolves it."""
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(cwd)) as repo:
        return {stage.name: stage.cmd for stage in repo.index.stages
                if isinstance(stage, PipelineStage) and os.path.relpath(stage.path, cwd) == "dvc.yaml"}
