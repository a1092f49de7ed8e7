"""The Great Expectations gate passes on the generated world and stops on corrupted data, naming what failed."""

import copy

import pytest

from latlab.config import ValidateConfig
from latlab.data.validation import DataValidationError, raise_on_failure, validate_datasets, write_report
from tests.settings import make

CFG = make(ValidateConfig, min_rows_per_split=3)


@pytest.fixture(scope="module")
def clean_summary(tiny_world):
    return validate_datasets(tiny_world, CFG)


def test_generated_world_passes(clean_summary):
    assert clean_summary["success"], [r for r in clean_summary["results"] if not r["success"]]
    assert clean_summary["evaluated"] > 40


def _corrupt(world, name, mutate):
    world = copy.deepcopy(world)
    mutate(world[name])
    return validate_datasets({name: world[name]}, CFG)


@pytest.mark.parametrize("name, mutate, expectation, needle", [
    ("requests", lambda rs: rs[0].update(prompt=""), "expect_column_values_to_be_between", "req-"),
    ("facts", lambda rs: rs[0].update(domain="astrology"), "expect_column_values_to_be_in_set", "fact-"),
    ("requests", lambda rs: [r.update(harmful=True, kind="harmful") for r in rs], "expect_column_mean_to_be_between",
     ""),
    ("requests", lambda rs: next(r for r in rs if r["split"] == "test").update(split="train"),
     "expect_column_values_to_be_between", "splits"),
    ("backdoor", lambda rs: [r.pop("completion") for r in rs], "expect_table_columns_to_match_set", ""),
    ("concepts", lambda rs: rs.__setitem__(slice(None), [r for r in rs if r["split"] != "validation"]),
     "expect_column_distinct_values_to_equal_set", ""),
])
def test_corruption_fails_with_a_message_naming_it(tiny_world, name, mutate, expectation, needle):
    summary = _corrupt(tiny_world, name, mutate)
    assert not summary["success"]
    with pytest.raises(DataValidationError) as err:
        raise_on_failure(summary)
    message = str(err.value)
    assert f"dataset '{name}'" in message and expectation in message and needle in message


def test_report_files(clean_summary, tmp_path):
    write_report(clean_summary, tmp_path / "v.json", tmp_path / "v.html")
    page = (tmp_path / "v.html").read_text()
    assert "expectations, all expectations passed" in page and "<script" not in page
