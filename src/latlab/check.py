"""The params check: `python -m latlab.check` (`make check`), run before `dvc repro` touches any output.

DVC deletes a stage's outputs before it runs the stage's command, so a params error found by the stage itself costs
the earlier results; this check finds it first. It validates params.yaml (optionally with a profile and
`dvc exp run -S`-style overrides) against the schema, then the constraints that need the model, read from its config
without loading weights: `model.source` names a loadable model (a directory with weights, config.json and a
tokenizer, a .gguf file, or a hub id in the local cache), and every block index (`layers`, `layer`,
`trainable_layers`, `probe_layers`) and hook point (`blocks.N.hook_resid_post`) exists in a model of that depth
(`model.toy.num_layers`, or config.json). One line per problem, exit status 2:

    python -m latlab.check                                  # params.yaml
    python -m latlab.check --profile profiles/smoke.yaml    # params.yaml + a profile, nothing written
    python -m latlab.check -S lat.epsilon=2.0 -S 'lat.layers=[2]'   # the overrides of a `dvc exp run -S`

Stages run the model-dependent part for their own params sections (`stage_problems`) before loading a model.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from latlab.config import ConfigError, Params, load_params, parse_params
from latlab.models.hook_names import hook_layer_index
from latlab.models.source import ModelSourceError, model_depth
from latlab.profiles import merged_profile, with_overrides
from latlab.tracking import stage_dependencies

BLOCK_FIELDS = ("layer", "layers", "trainable_layers", "probe_layers")  # params keys holding decoder block indices
HOOK_FIELDS = ("hook_points",)


def _settings(node: Any, where: str) -> Iterator[tuple[str, Any, str]]:
    """(dotted key, value, field name) of every block-index and hook-point setting under `node`."""
    if isinstance(node, dict):
        for name, entry in node.items():
            yield from _settings(entry, f"{where}.{name}")
    elif isinstance(node, BaseModel):
        for name, field in type(node).model_fields.items():
            value = getattr(node, name)
            key = f"{where}.{field.alias or name}".lstrip(".")
            if name in BLOCK_FIELDS + HOOK_FIELDS:
                if value is not None:
                    yield key, value, name
            else:
                yield from _settings(value, key)


def _depth_note(params: Params, depth: int) -> str:
    where = "model.toy.num_layers" if params.model.source == "toy" else f"config.json of {params.model.source}"
    return f"the model has {depth} blocks, 0-{depth - 1} ({where})"


def layer_problems(params: Params, depth: int | None) -> list[tuple[str, str]]:
    """(dotted key, message) for every block index and hook point that does not exist in a model of `depth` blocks
    (unknown hook point names are found without a depth)."""
    found = []
    for key, value, field in _settings(params, ""):
        values = [value] if isinstance(value, (int, str)) else list(value)
        for item in values:
            if field in HOOK_FIELDS:
                try:
                    block = hook_layer_index(item)
                except ValueError as err:
                    found.append((key, str(err)))
                    continue
                if depth is not None and block >= depth:
                    found.append((key, f"hook point {item!r} does not exist: {_depth_note(params, depth)}"))
            elif depth is not None and not 0 <= item < depth:
                found.append((key, f"block {item} does not exist: {_depth_note(params, depth)}"))
    return found


def model_problems(params: Params, source: str = "params.yaml", sections: list[str] | None = None,
                   check_source: bool = True) -> list[str]:
    """One line per model-dependent problem (`sections`: only keys of these params sections); a model source that
    cannot be read is one problem itself (`check_source`), else its depth is taken as unknown."""
    try:
        depth = model_depth(params.model)
        lines = []
    except ModelSourceError as err:
        depth, lines = None, [f"{source}: {err}"] if check_source else []
    for key, message in layer_problems(params, depth):
        if sections is None or any(key == s or key.startswith(f"{s}.") or s.startswith(f"{key}.") for s in sections):
            lines.append(f"{source}: {key}: {message}")
    return lines


def stage_problems(params: Params, stage: str, source: str = "params.yaml") -> list[str]:
    """The model-dependent problems of the params a DVC stage declares (dvc.yaml `params`; without dvc.yaml, its own
    section), checked by the stage before its model loads."""
    sections = stage_dependencies(stage, field="params") or [stage.replace("@", ".", 1)]
    return model_problems(params, source, sections, check_source=False)


def check(params_path: Path = Path("params.yaml"), profile: Path | None = None,
          overrides: dict[str, Any] | None = None) -> list[str]:
    """Every problem of params.yaml (+ profile, + overrides), one line each; [] when it is good to run."""
    label = str(params_path) + (f" + {profile}" if profile else "") + (" + overrides" if overrides else "")
    try:
        if profile is None and not overrides:
            params = load_params(params_path)
        else:
            raw = merged_profile(profile, params_path) if profile else load_params_raw(params_path)
            params = parse_params(with_overrides(raw, overrides or {}), label)
    except ConfigError as err:
        return [str(err)]
    return model_problems(params, label)


def load_params_raw(path: Path) -> dict[str, Any]:
    load_params(path)  # the file's own errors first, named by the file
    return yaml.safe_load(path.read_text())


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` as `dvc exp run -S` takes it (the value is YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected key=value")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: not valid YAML ({str(err).splitlines()[0]})") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m latlab.check", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--profile", type=Path, default=None, help="a profile merged over params (nothing written)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an override as `dvc exp run -S` takes it (repeatable)")
    args = parser.parse_args(argv)
    try:
        overrides = dict(parse_override(text) for text in args.overrides)
    except ConfigError as err:
        problems = [str(err)]
    else:
        problems = check(args.params, args.profile, overrides)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if problems:
        raise SystemExit(2)
    print(f"{args.params}: ok")


if __name__ == "__main__":
    main()
