"""Profiles: partial params files (profiles/*.yaml) deep-merged over params.yaml.

`python -m latlab.profiles apply profiles/smoke.yaml` rewrites params.yaml with the profile applied (validated
first, so a bad profile changes nothing); `git checkout params.yaml` returns to the default profile.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import sys
from pathlib import Path
from typing import Any

import yaml

from latlab.config import ConfigError, parse_params


EVERY_ENTRY = "*"


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` merged into `base`, recursively. In a method table, the key `"*"` overrides every entry: it refines
    what an entry sets and does not switch on a block the entry leaves null (e.g. `lat`), so one profile line sizes
    every method, including ones added later."""
    merged = dict(base)
    for key, value in override.items():
        if key == EVERY_ENTRY and isinstance(value, dict):
            for name, entry in merged.items():
                if isinstance(entry, dict):
                    merged[name] = deep_merge(entry, {k: v for k, v in value.items()
                                                      if not (isinstance(v, dict) and entry.get(k) is None)})
            continue
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def set_dotted(raw: dict[str, Any], dotted_key: str, value: Any) -> None:
    """`raw[a][b][c] = value` for `a.b.c` (a `dvc exp run -S` override, a sweep grid key). Every key of params.yaml is
    set there, so a key it lacks is unknown: ConfigError naming it and its likely meaning."""
    *path, leaf = dotted_key.split(".")
    node = raw
    for depth, key in enumerate(path):
        if not isinstance(node.get(key), dict):
            raise ConfigError(f"override {dotted_key}: {'.'.join(path[:depth + 1])} is not a section of params.yaml")
        node = node[key]
    if leaf not in node:
        close = difflib.get_close_matches(leaf, [str(k) for k in node], n=1)
        hint = f" (did you mean {'.'.join([*path, close[0]])}?)" if close else ""
        raise ConfigError(f"override {dotted_key}: unknown key{hint}")
    node[leaf] = value


def with_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of `raw` with dotted-key `overrides` set (see `set_dotted`)."""
    merged = copy.deepcopy(raw)
    for key, value in overrides.items():
        set_dotted(merged, key, value)
    return merged


def merged_profile(profile: Path, params: Path = Path("params.yaml")) -> dict[str, Any]:
    """params.yaml with the profile deep-merged in, validated (ConfigError naming the key); nothing is written."""
    if not profile.exists():
        raise ConfigError(f"{profile}: profile not found")
    override = yaml.safe_load(profile.read_text()) or {}
    if not isinstance(override, dict):
        raise ConfigError(f"{profile}: a profile must be a mapping of params sections")
    merged = deep_merge(yaml.safe_load(params.read_text()) or {}, override)
    parse_params(merged, f"{params} + {profile}")
    return merged


def apply_profile(profile: Path, params: Path = Path("params.yaml")) -> dict[str, Any]:
    merged = merged_profile(profile, params)
    header = f"# params.yaml with profile {profile} applied (restore the default with: git checkout params.yaml)\n"
    params.write_text(header + yaml.safe_dump(merged, sort_keys=False))
    return merged


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m latlab.profiles")
    sub = parser.add_subparsers(dest="command", required=True)
    apply = sub.add_parser("apply", help="merge a profile into params.yaml")
    apply.add_argument("profile", type=Path)
    apply.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    try:
        apply_profile(args.profile, args.params)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"applied {args.profile} to {args.params}")


if __name__ == "__main__":
    main()
