"""params.yaml is the one source of truth: every schema field is set there, and config.py defaults nothing.

The check walks the pydantic schema (sections, nested sections, the method tables' discriminated unions, optional
blocks that are set) against the raw YAML, so a value that only the code knows fails here, named."""

from __future__ import annotations

import copy
import inspect
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from latlab import config
from latlab.profiles import deep_merge
from tests.settings import PARAMS_YAML, raw_params

ROOT = PARAMS_YAML.parent


def _models_in(annotation) -> list[type[BaseModel]]:
    """The BaseModel classes an annotation can hold (through Optional, unions and Annotated)."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def _union_member(models: list[type[BaseModel]], raw: dict) -> type[BaseModel] | None:
    if len(models) == 1:
        return models[0]
    tagged = [m for m in models if "method" in m.model_fields
              and raw.get("method") in typing.get_args(m.model_fields["method"].annotation)]
    return tagged[0] if tagged else None


def unset_keys(raw: dict, model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted keys of `model`'s fields that `raw` does not set (recursing into every set sub-section)."""
    missing = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        where = f"{prefix}{key}"
        if key not in raw:
            missing.append(where)
            continue
        value = raw[key]
        origin = typing.get_origin(field.annotation)
        if origin is dict and isinstance(value, dict):  # a method table: name -> entry
            entry_models = _models_in(typing.get_args(field.annotation)[1])
            for entry_name, entry in value.items():
                member = _union_member(entry_models, entry) if isinstance(entry, dict) else None
                if member is not None:
                    missing += unset_keys(entry, member, f"{where}.{entry_name}.")
            continue
        models = _models_in(field.annotation)
        if models and isinstance(value, dict):
            member = _union_member(models, value)
            if member is not None:
                missing += unset_keys(value, member, f"{where}.")
    return missing


def sections_with_defaults() -> list[str]:
    """`Class.field` for every schema field that has a default of its own in config.py."""
    return [f"{cls.__name__}.{name}" for cls in vars(config).values()
            if inspect.isclass(cls) and issubclass(cls, config.Section) and cls.__module__ == config.__name__
            for name, field in cls.model_fields.items() if not field.is_required()]


def test_params_yaml_sets_every_field():
    missing = unset_keys(raw_params(), config.Params)
    assert not missing, f"params.yaml does not set: {', '.join(missing)}"


def test_config_py_defaults_nothing():
    defaulted = sections_with_defaults()
    assert not defaulted, f"config.py gives these fields a default (set them in params.yaml instead): {defaulted}"


def test_the_completeness_check_names_a_missing_key():
    raw = copy.deepcopy(raw_params())
    del raw["lat"]["away_ignore_logp"]
    del raw["unlearn"]["npo"]["beta"]
    del raw["unlearn"]["ga_lat"]["lat"]["epsilon"]
    del raw["attacks"]["latent"]["eps_sweep"]
    assert unset_keys(raw, config.Params) == ["lat.away_ignore_logp", "unlearn.ga_lat.lat.epsilon",
                                              "unlearn.npo.beta", "attacks.latent.eps_sweep"]


def test_the_default_check_catches_a_default():
    class Defaulted(config.Section):
        steps: int = 3

    assert [n for n, f in Defaulted.model_fields.items() if not f.is_required()] == ["steps"]
    assert not sections_with_defaults()  # the real schema has none (the class above is not in config.py)


def test_a_missing_key_fails_loading_with_one_line_naming_it(tmp_path):
    raw = raw_params()
    del raw["unlearn"]["simnpo"]["gamma"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(config.ConfigError, match=r"params.yaml: unlearn\.simnpo\.gamma: Field required$"):
        config.load_params(path)


@pytest.mark.parametrize("profile", sorted((ROOT / "profiles").glob("*.yaml")), ids=lambda p: p.name)
def test_profiles_are_partial_overrides_that_validate(profile: Path):
    override = yaml.safe_load(profile.read_text())
    merged = deep_merge(raw_params(), override)
    config.parse_params(merged, str(profile))
    assert unset_keys(override, config.Params) != [], f"{profile.name} repeats the whole of params.yaml"


def test_every_entry_wildcard_sizes_new_methods_without_switching_on_lat():
    merged = deep_merge(raw_params(), {"unlearn": {"*": {"steps": 2, "lat": {"inner_steps": 1}}}})
    params = config.parse_params(merged)
    assert {cfg.steps for cfg in params.unlearn.values()} == {2}
    assert params.unlearn["npo"].lat is None and params.unlearn["npo_lat"].lat.inner_steps == 1
