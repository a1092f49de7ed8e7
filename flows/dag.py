"""The stage DAG read from dvc.yaml: a stage depends on another when one of its deps contains or lies inside one
of that stage's outputs (outs, metrics, plots)."""

from __future__ import annotations

from graphlib import TopologicalSorter
from pathlib import Path

import yaml


def _paths(entries: list) -> list[str]:
    # dvc.yaml lists outs/metrics/plots either as plain paths or as {path: options}
    return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries or []]


def _inside(path: str, root: str) -> bool:
    path, root = path.rstrip("/"), root.rstrip("/")
    return path == root or path.startswith(root + "/")


def stage_graph(dvc_yaml: Path = Path("dvc.yaml")) -> dict[str, set[str]]:
    """{stage: stages it depends on}. foreach/matrix stages are kept as one node under their base name."""
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})
    produced = {name: _paths(spec.get("outs")) + _paths(spec.get("metrics")) + _paths(spec.get("plots"))
                for name, spec in stages.items()}
    graph: dict[str, set[str]] = {}
    for name, spec in stages.items():
        body = spec.get("do", spec)
        deps = [str(d) for d in body.get("deps", [])]
        graph[name] = {other for other, outs in produced.items() if other != name
                       for dep in deps for out in outs if _inside(dep, out) or _inside(out, dep)}
    return graph


def stage_order(dvc_yaml: Path = Path("dvc.yaml"), only: list[str] | None = None) -> list[str]:
    graph = stage_graph(dvc_yaml)
    unknown = sorted(set(only or []) - set(graph))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {sorted(graph)}")
    order = list(TopologicalSorter(graph).static_order())
    return [s for s in order if only is None or s in only]
