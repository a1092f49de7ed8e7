"""scripts/lat_sweep.py: variant folders get the run's params with validated `lat` overrides and links to its data
and RT model; the results table lists every model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from latlab.profiles import deep_merge
from tests.settings import raw_params

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import lat_sweep  # noqa: E402


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "run"
    (run / "data/world").mkdir(parents=True)
    (run / "models/rt").mkdir(parents=True)
    (run / "params.yaml").write_text(yaml.safe_dump(deep_merge(raw_params(), {"lat": {"epsilon": 2.0, "steps": 3}})))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"workdir": str(run), "out": str(tmp_path / "out"),
                                     "variants": {"a": {"retain": 4.0}}}))
    return run, sweep


def test_variant_folder_overrides_lat_and_links_the_run(run):
    folder_run, sweep_file = run
    sweep = lat_sweep.load_sweep(sweep_file)
    folder = lat_sweep.prepare_variant(sweep, "a", {"retain": 4.0})
    lat = yaml.safe_load((folder / "params.yaml").read_text())["lat"]
    assert lat == {**raw_params()["lat"], "epsilon": 2.0, "steps": 3, "retain": 4.0}
    assert (folder / "data").resolve() == (folder_run / "data").resolve()
    assert (folder / "models/rt").resolve() == (folder_run / "models/rt").resolve()


def test_bad_override_and_missing_run_fail_naming_what(run, tmp_path):
    _, sweep_file = run
    with pytest.raises(Exception, match=r"lat\.retian: unknown key"):
        lat_sweep.prepare_variant(lat_sweep.load_sweep(sweep_file), "b", {"retian": 4.0})
    empty = tmp_path / "empty.yaml"
    empty.write_text(yaml.safe_dump({"workdir": str(tmp_path / "nowhere"), "out": "x", "variants": {}}))
    with pytest.raises(SystemExit, match="has no params.yaml"):
        lat_sweep.load_sweep(empty)


def test_table_has_a_row_per_model():
    text = lat_sweep.table({"rt": {"harmful_asr": 0.5, "benign_compliance": 0.7, "asr.direct": 0.5},
                            "a": {"harmful_asr": 0.0, "benign_compliance": 0.6, "asr.direct": 0.0,
                                  "lat": {"retain": 4.0}, "seconds": 12.0}})
    lines = text.splitlines()
    assert lines[0].startswith("| model | lat overrides | harmful_asr | benign_compliance | asr.direct")
    assert lines[3] == '| a | {"retain": 4.0} | 0.00 | 0.60 | 0.00 | 12 |'
