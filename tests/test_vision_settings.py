"""The `spawrious:` params section: defaults, validation, one-line errors."""

import pytest

from latlab.config import ConfigError, SpawriousConfig, load_params


def test_defaults_and_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("spawrious:\n  splits: [m2m_hard]\n  methods: [erm, jtt]\n  train:\n    steps: 7\n"
                    "tracking:\n  experiment: x\n")
    params = load_params(path)
    cfg = params.spawrious
    assert cfg.splits == ["m2m_hard"] and cfg.methods == ["erm", "jtt"] and cfg.train.steps == 7
    assert params.tracking.experiment == "x"
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_params(empty).spawrious == SpawriousConfig()


@pytest.mark.parametrize("body, where", [
    ("spawrious:\n  methods: [erm, dann]\n", "spawrious.methods.1"),
    ("spawrious:\n  data:\n    per_env_total: 3\n", "spawrious.data.per_env_total"),
    ("spawrious:\n  train:\n    stepz: 3\n", "spawrious.train.stepz: unknown key"),
])
def test_bad_values_fail_in_one_line(tmp_path, body, where):
    path = tmp_path / "params.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=where) as err:
        load_params(path)
    assert "\n" not in str(err.value)
