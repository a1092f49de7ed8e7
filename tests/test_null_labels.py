"""Issue 13 ("Bad input"): a null label fails every data gate, naming the file, the column and the count.

GX's in-set check skips nulls, so before the fix a record with a null `split`, `kind`, `domain` or `format` passed
the gate and then silently dropped out of every split. Every label set of every dataset (the toy world, the real-data
loaders, the Spawrious manifests) now carries a not-null check."""

from __future__ import annotations

import copy
import json

import pytest

from latlab.config import ConfigError, SpawriousDataConfig, ValidateConfig
from latlab.data.loaders import DataFormatError, load_corpus, load_persona, load_preferences
from latlab.data.real_corpora import load_real_corpora
from latlab.data.validation import SPECS, DataValidationError, raise_on_failure, validate_datasets
from latlab.vision.benchmark import generate_split
from latlab.vision.splits import split_definition
from latlab.vision.validation import failure_message, validate_manifest
from tests.settings import make, with_params
from tests.test_real_corpora import FILES, FIXTURES, GATE, SECTION

WORLD_GATE = make(ValidateConfig, min_rows_per_split=3)
NULL_CHECK = "expect_column_values_to_not_be_null"
LABEL_COLUMNS = [(name, column) for name, spec in SPECS.items() for column in spec.label_sets]


@pytest.fixture(scope="module")
def datasets(tiny_world):
    """A clean dataset for every suite: the toy world, plus real-data records for the real-only schemas."""
    corpus = load_corpus(FILES["forget_corpus"], "forget", 20) + load_corpus(FILES["retain_corpus"], "retain", 20)
    return {**tiny_world, "corpus": corpus, "preferences": load_preferences(FILES["preferences"], "harmless")}


def _failures(summary: dict) -> list[tuple[str, str | None]]:
    return [(r["expectation"], r["kwargs"].get("column")) for r in summary["results"] if not r["success"]]


def _gate(name: str, records: list[dict], tiny_world) -> dict:
    cfg = WORLD_GATE if name in tiny_world else GATE
    return validate_datasets({name: records}, cfg, sources={name: f"data/world/{name}.jsonl"})


def test_every_dataset_passes_clean(datasets, tiny_world):
    for name, records in datasets.items():
        assert _gate(name, records, tiny_world)["success"], (name, _failures(_gate(name, records, tiny_world)))


@pytest.mark.parametrize("name, column", LABEL_COLUMNS)
def test_a_null_in_any_label_column_fails_naming_file_column_and_count(datasets, tiny_world, name, column):
    records = copy.deepcopy(datasets[name])
    records[1][column] = None
    summary = _gate(name, records, tiny_world)
    assert _failures(summary) == [(NULL_CHECK, column)]
    with pytest.raises(DataValidationError) as err:
        raise_on_failure(summary)
    message = str(err.value)
    assert f"dataset '{name}' (data/world/{name}.jsonl)" in message
    assert f"1 null value(s) in column '{column}'" in message and records[1]["id"] in message


def test_the_issue_case_null_split_and_null_kind_on_two_requests(tiny_world):
    requests = copy.deepcopy(tiny_world["requests"])
    requests[0]["split"], requests[1]["kind"] = None, None
    summary = _gate("requests", requests, tiny_world)
    assert sorted(_failures(summary)) == [(NULL_CHECK, "kind"), (NULL_CHECK, "split")]


def test_null_domain_and_format_facts_counted(tiny_world):
    facts = copy.deepcopy(tiny_world["facts"])
    for record in facts[:2]:
        record["domain"] = None
    facts[3]["format"] = None
    with pytest.raises(DataValidationError) as err:
        raise_on_failure(_gate("facts", facts, tiny_world))
    message = str(err.value)
    assert "2 null value(s) in column 'domain'" in message and "1 null value(s) in column 'format'" in message


def test_null_balance_label_fails(tiny_world):
    requests = copy.deepcopy(tiny_world["requests"])
    requests[0]["harmful"] = None  # the harmful/benign mean skips nulls
    assert (NULL_CHECK, "harmful") in _failures(_gate("requests", requests, tiny_world))


# --- real data ------------------------------------------------------------------------------------------------------

def _rewrite_jsonl(source, target, change: dict[int, dict]) -> None:
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    for index, update in change.items():
        rows[index].update(update)
    target.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_real_question_file_with_a_null_answer_is_rejected(tmp_path):
    bad = tmp_path / "wmdp_null.jsonl"
    _rewrite_jsonl(FILES["forget_questions"], bad, {1: {"answer": None}, 2: {"answer": None}})
    cfg = with_params({"real_data": {**SECTION, "forget_questions": str(bad)}}).real_data
    with pytest.raises(ConfigError) as err:
        load_real_corpora(cfg, GATE)
    message = str(err.value)
    assert message.startswith(f"params.yaml: real_data.forget_questions: {bad}: ")
    assert "label column 'answer' has 2 null value(s) (rows [2, 3])" in message


def test_real_csv_with_an_empty_answer_cell_is_rejected(tmp_path):
    lines = FILES["retain_questions"].read_text().splitlines()
    head, *rows = lines
    rows[0] = rows[0].rsplit(",", 1)[0] + ","  # the answer cell left empty
    bad = tmp_path / "retain_null.csv"
    bad.write_text("\n".join([head, *rows]) + "\n")
    cfg = with_params({"real_data": {**SECTION, "retain_questions": str(bad)}}).real_data
    with pytest.raises(ConfigError, match=r"retain_null.csv: label column 'answer' has 1 null value\(s\)"):
        load_real_corpora(cfg, GATE)


def test_persona_file_with_a_null_answer_is_rejected(tmp_path):
    bad = tmp_path / "persona_null.jsonl"
    _rewrite_jsonl(FIXTURES / "persona_power.jsonl", bad, {0: {"answer_not_matching_behavior": None}})
    with pytest.raises(DataFormatError, match=r"persona_null.jsonl: label column 'answer_not_matching_behavior' has "
                                              r"1 null value\(s\)"):
        load_persona(bad)


def test_real_data_gate_names_the_file_of_a_null_label(monkeypatch):
    # the loaders derive corpus labels, so null one on the way in: the gate must stop it and name the files
    import latlab.data.real_corpora as real_corpora

    def nulled(path, domain, *args, **kwargs):
        records = load_corpus(path, domain, *args, **kwargs)
        records[0]["split"] = None
        return records

    monkeypatch.setattr(real_corpora, "load_corpus", nulled)
    with pytest.raises(DataValidationError) as err:
        load_real_corpora(with_params({"real_data": SECTION}).real_data, GATE)
    message = str(err.value)
    assert f"dataset 'corpus' ({FILES['forget_corpus']}, {FILES['retain_corpus']})" in message
    assert "2 null value(s) in column 'split'" in message  # one per corpus file


# --- Spawrious manifests --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def manifest():
    cfg = make(SpawriousDataConfig, per_env_total=30, test_per_group=5, render={"image_size": 8})
    return generate_split("o2o_medium", cfg, counterfactual=False).manifest


@pytest.mark.parametrize("column", ["part", "env", "breed", "location", "label"])
def test_null_manifest_label_fails_the_spawrious_gate(manifest, column):
    nulled = manifest.copy()
    nulled[column] = nulled[column].astype(object)
    nulled.loc[nulled.index[0], column] = None
    summary = validate_manifest(nulled, split_definition("o2o_medium"), 30, 5)
    assert not summary["success"]
    assert (NULL_CHECK, column) in [(c["expectation"], c.get("column")) for c in summary["checks"] if not c["success"]]
    message = failure_message(summary, "data/spawrious/o2o_medium/manifest.csv")
    assert "spawrious split 'o2o_medium' (data/spawrious/o2o_medium/manifest.csv)" in message
    assert f"1 null value(s) in column '{column}'" in message
