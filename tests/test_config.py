"""params.yaml validation: defaults load, bad keys and values fail in one line naming the key; profiles."""

from pathlib import Path

import pytest
import yaml

from latlab.config import ConfigError, load_params, parse_params
from latlab.profiles import apply_profile, deep_merge
from tests.settings import raw_params

REPO = Path(__file__).resolve().parents[1]


def test_repository_params_and_profiles_are_valid(tmp_path):
    params = load_params(REPO / "params.yaml")
    assert params.model.source == "toy"
    for profile in sorted((REPO / "profiles").glob("*.yaml")):
        target = tmp_path / "params.yaml"
        target.write_text((REPO / "params.yaml").read_text())
        apply_profile(profile, target)
        load_params(target)


@pytest.mark.parametrize("raw, expected", [
    ({"base": {"lrr": 1}}, "params.yaml: base.lrr: unknown key"),
    ({"base": {"lr": -1}}, "params.yaml: base.lr: Input should be greater than 0 (got -1)"),
    ({"base": {"steps": "many"}}, "params.yaml: base.steps: Input should be a valid integer"),
    ({"model": {"toy": {"hidden_size": 30, "num_heads": 4}}}, "params.yaml: model.toy: Value error"),
    ({"evaluate": {"judge": "gpt"}}, "params.yaml: evaluate.judge: Input should be 'toy', 'refusal_phrase', 'lexical', 'classifier' or 'generative'"),
    ({"validate": {"max_words": 0}}, "params.yaml: validate.max_words"),
    ({"nonsense": 1}, "params.yaml: nonsense: unknown key"),
    ({"unlearn": {"npo": {"beta": 0}}}, "params.yaml: unlearn.npo.beta: Input should be greater than 0 (got 0)"),
    ({"unlearn": {"npo": {"method": "npx"}}}, "params.yaml: unlearn.npo: Input tag 'npx'"),
    ({"unlearn": {"Bad-Name": {"method": "ga"}}}, "params.yaml: unlearn.Bad-Name"),
    ({"study": {"min_seeds": 1}}, "params.yaml: study.min_seeds: Input should be greater than or equal to 2"),
    ({"study": {"min_seeds": 4}}, "params.yaml: study: Value error, study.min_seeds 4 > the 3 seeds of study.seeds"),
])
def test_bad_params_fail_in_one_line(raw, expected):
    with pytest.raises(ConfigError) as err:
        parse_params(deep_merge(raw_params(), raw))
    message = str(err.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_a_misspelled_section_is_named_with_its_likely_meaning():
    raw = raw_params()
    raw["lta"] = raw.pop("lat")
    with pytest.raises(ConfigError, match=r"^params.yaml: lta: unknown key \(did you mean lat\?\)$"):
        parse_params(raw)


def test_load_params_reports_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_profile_merges_deeply_and_bad_profile_changes_nothing(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(deep_merge(raw_params(), {"base": {"steps": 10, "lr": 0.1}, "seed": 1})))
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump({"base": {"steps": 3}}))
    apply_profile(profile, params)
    merged = load_params(params)
    assert merged.base.steps == 3 and merged.base.lr == 0.1 and merged.seed == 1
    before = params.read_text()
    profile.write_text(yaml.safe_dump({"base": {"stepz": 3}}))
    with pytest.raises(ConfigError, match="base.stepz: unknown key"):
        apply_profile(profile, params)
    assert params.read_text() == before
