"""The `spawrious:` params section: read from the file, validation, one-line errors."""

import pytest
import yaml

from latlab.config import ConfigError, load_params
from latlab.profiles import deep_merge
from tests.settings import raw_params


def test_section_is_read_from_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(deep_merge(raw_params(), yaml.safe_load(
        "spawrious:\n  splits: [m2m_hard]\n  methods: [erm, jtt]\n  train:\n    steps: 7\n"
        "tracking:\n  experiment: x\n"))))
    params = load_params(path)
    cfg = params.spawrious
    assert cfg.splits == ["m2m_hard"] and cfg.methods == ["erm", "jtt"] and cfg.train.steps == 7
    assert params.tracking.experiment == "x"


def test_an_empty_file_names_the_first_missing_section(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"empty.yaml: \w+: Field required"):
        load_params(empty)


@pytest.mark.parametrize("body, where", [
    ("spawrious:\n  methods: [erm, dann]\n", "spawrious.methods.1"),
    ("spawrious:\n  data:\n    per_env_total: 3\n", "spawrious.data.per_env_total"),
    ("spawrious:\n  train:\n    stepz: 3\n", "spawrious.train.stepz: unknown key"),
    ("spawrious:\n  methods: [erm, dfr]\n  train:\n    holdout_fraction: 0.0\n", "spawrious.train.holdout_fraction > 0"),
])
def test_bad_values_fail_in_one_line(tmp_path, body, where):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(deep_merge(raw_params(), yaml.safe_load(body))))
    with pytest.raises(ConfigError, match=where) as err:
        load_params(path)
    assert "\n" not in str(err.value)
