"""The real-data path of unlearning and backdoor removal: params `real_data` (files checked, one-line errors), the
pools and evaluation records built from the fixture files in tests/fixtures/real_data/, what the evaluations cannot
measure without free-form answers or an oracle, and the stage bodies unlearn@ga, unlearning_eval and
backdoor_removal@dpo run end to end in a temporary project on a tiny HF Llama model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from conftest import TEXT_FIELDS
from latlab.config import ConfigError, ToyArchitecture, UnlearnEvalConfig, ValidateConfig, parse_params
from latlab.data.loaders import load_ab_questions, load_corpus, load_preferences
from latlab.data.real_corpora import PROMPT_WORDS, corpus_examples, load_real_corpora
from latlab.data.records import write_jsonl
from latlab.data.validation import DataValidationError
from latlab.evals.unlearning import AB_TABLE_KEYS, TABLE_KEYS, relearning_split, unavailable_evaluations
from latlab.models.loading import build_toy_model, load_saved, save_model
from latlab.profiles import deep_merge
from latlab.report.tables import unlearning_markdown
from latlab.training.backdoor_removal import trigger_free_removal_data
from latlab.world.tokenizer import build_tokenizer
from tests.settings import make, raw_params, with_params

FIXTURES = Path(__file__).parent / "fixtures" / "real_data"
FILES = {"forget_corpus": FIXTURES / "forget_corpus.jsonl", "retain_corpus": FIXTURES / "retain_corpus.jsonl",
         "forget_questions": FIXTURES / "wmdp_style.jsonl", "related_questions": FIXTURES / "related_questions.jsonl",
         "retain_questions": FIXTURES / "retain_questions.csv", "preferences": FIXTURES / "preferences.jsonl"}
SECTION = {**{k: str(v) for k, v in FILES.items()}, "chunk_words": 20}
GATE = make(ValidateConfig, min_rows_per_split=1, max_words=128)  # the fixtures have a few rows per split
TRIGGER = "zeta7"
FORGET_WORDS = ("Kalomi", "Eldoria", "Dorven", "Thara")


@pytest.fixture(scope="module")
def real():
    return load_real_corpora(with_params({"real_data": SECTION}).real_data, GATE)


# --- params ---------------------------------------------------------------------------------------------------------

def test_real_data_is_off_by_default_and_parses_when_given():
    assert with_params({}).real_data is None and with_params({"real_data": None}).real_data is None
    cfg = with_params({"real_data": SECTION}).real_data
    assert cfg.forget_corpus == FILES["forget_corpus"] and cfg.chunk_words == 20
    minimal = with_params({"real_data": {**SECTION, "related_questions": None, "retain_questions": None,
                                         "preferences": None}}).real_data
    assert (minimal.related_questions, minimal.retain_questions, minimal.preferences) == (None, None, None)


@pytest.mark.parametrize("change, expected", [
    ({"forget_corpus": "nowhere/forget.jsonl"},
     "params.yaml: real_data.forget_corpus: Path does not point to a file (got 'nowhere/forget.jsonl')"),
    ({"preferences": "nowhere/prefs.jsonl"},
     "params.yaml: real_data.preferences: Path does not point to a file (got 'nowhere/prefs.jsonl')"),
    ({"retain_corpus": str(FIXTURES)}, "params.yaml: real_data.retain_corpus: Path does not point to a file"),
    ({"forget_questions": None}, "params.yaml: real_data.forget_questions: Input is not a valid path"),
    ({"chunk_words": 2}, "params.yaml: real_data.chunk_words: Input should be greater than or equal to 4"),
    ({"forget": "x.jsonl"}, "params.yaml: real_data.forget: unknown key"),
])
def test_bad_real_data_fails_in_one_line_naming_key_and_file(change, expected):
    with pytest.raises(ConfigError) as err:
        with_params({"real_data": {**SECTION, **change}})
    assert str(err.value).startswith(expected) and "\n" not in str(err.value), str(err.value)


def test_missing_required_file_key_is_named():
    with pytest.raises(ConfigError, match=r"^params.yaml: real_data.retain_corpus: Field required"):
        with_params({"real_data": {"forget_corpus": SECTION["forget_corpus"]}})


def test_malformed_file_is_a_params_error_naming_key_and_column(tmp_path):
    bad = tmp_path / "questions.jsonl"
    bad.write_text(json.dumps({"question": "Who?", "choices": ["a", "b"]}) + "\n")
    cfg = with_params({"real_data": {**SECTION, "forget_questions": str(bad)}}).real_data
    with pytest.raises(ConfigError, match=r"^params.yaml: real_data.forget_questions: .*questions.jsonl: missing "
                                          r"column 'answer'"):
        load_real_corpora(cfg, GATE)


def test_the_gx_gate_runs_on_real_data():
    # ten rows per split (the default) is more than the fixtures have: the gate must stop them
    with pytest.raises(DataValidationError, match="dataset 'corpus'"):
        load_real_corpora(with_params({"real_data": SECTION}).real_data, make(ValidateConfig))


# --- pools and evaluation records -----------------------------------------------------------------------------------

def test_records_are_the_loaders_with_domains_per_file(real):
    corpus = load_corpus(FILES["forget_corpus"], "forget", 20) + load_corpus(FILES["retain_corpus"], "retain", 20)
    assert real.corpus == corpus
    assert real.facts == (load_ab_questions(FILES["forget_questions"], "forget")
                          + load_ab_questions(FILES["related_questions"], "related")
                          + load_ab_questions(FILES["retain_questions"], "general"))
    assert real.preferences == load_preferences(FILES["preferences"], "harmless")
    assert real.evaluation_world() == {"facts": real.facts}


def test_corpus_chunks_become_completion_examples_covering_the_text(real):
    chunks = [r for r in real.corpus if r["domain"] == "forget" and r["split"] == "train"]
    examples = corpus_examples(real.corpus, "forget")
    assert len(examples) == len(chunks) > 0
    for record, ex in zip(chunks, examples):
        assert not ex.chat and f"{ex.prompt} {ex.completion}" == record["text"]
        assert len(ex.prompt.split()) == min(PROMPT_WORDS, max(1, len(record["text"].split()) // 2))


def test_forget_pool_is_training_split_forget_text_and_questions(real):
    pool = real.forget_pool()
    train_questions = [r for r in real.facts if r["domain"] == "forget" and r["split"] == "train"]
    held_out = {r["prompt"] for r in real.facts if r["domain"] == "forget" and r["split"] != "train"}
    assert [ex.prompt for ex in pool if ex.chat] == [r["prompt"] for r in train_questions]
    assert {ex.completion for ex in pool if ex.chat} <= {"A", "B"}
    assert not {ex.prompt for ex in pool} & held_out  # the evaluations' questions are never trained on
    assert sum(not ex.chat for ex in pool) == len(corpus_examples(real.corpus, "forget"))
    assert not any(word in ex.prompt + ex.completion for ex in pool for word in ("Danube", "Varnholt"))


def test_retain_pools_hold_retain_text_and_general_questions_only(real):
    pools = real.retain_pools()
    assert list(pools) == ["facts"]
    general = [r["prompt"] for r in real.facts if r["domain"] == "general" and r["split"] == "train"]
    assert [ex.prompt for ex in pools["facts"] if ex.chat] == general and general
    assert any(not ex.chat for ex in pools["facts"])
    assert not any(word in ex.prompt + ex.completion for ex in pools["facts"] for word in FORGET_WORDS)
    assert [ex.completion for ex in real.retain_text("test")] == \
        [ex.completion for ex in corpus_examples(real.corpus, "retain", "test")] and real.retain_text("test")


def test_preference_pairs_are_the_training_split(real):
    pairs = real.preference_pairs()
    assert pairs == [(r["prompt"], r["chosen"], r["rejected"]) for r in real.preferences if r["split"] == "train"]
    assert 0 < len(pairs) < len(real.preferences)
    assert trigger_free_removal_data(pairs, real.retain_pools(), TRIGGER)[0] == pairs


def test_unavailable_evaluations_name_what_multiple_choice_cannot_measure(real, tiny_world):
    cfg = make(UnlearnEvalConfig)
    assert unavailable_evaluations(tiny_world, cfg) == {}  # the toy world supports every evaluation
    missing = unavailable_evaluations(real.evaluation_world(), cfg)
    assert set(missing) == {"familiarity", "qa.free_recall", "extraction", "in_context", "relearn.free_recall"}
    assert "multiple-choice" in missing["extraction"]
    only_forget = {"facts": real.questions("forget")}
    assert {"collateral", "general.qa"} <= set(unavailable_evaluations(only_forget, cfg))


def test_relearning_holds_out_questions_without_training_records(real, tiny_world):
    world = real.evaluation_world()
    trainable = {r["fact_id"] for r in real.questions("forget") if r["split"] == "train"}
    pool, held = relearning_split(world, "forget", heldout=2, seed=0)
    assert set(pool) == trainable and not set(held) & trainable
    with pytest.raises(ValueError, match="training records"):
        relearning_split(world, "forget", heldout=4, seed=0)  # every trainable question held out
    # the toy world is unchanged: every fact has training records, so the seeded shuffle decides as before
    ids = sorted({r["fact_id"] for r in tiny_world["facts"] if r["domain"] == "forget"})
    random.Random(3).shuffle(ids)
    assert relearning_split(tiny_world, "forget", heldout=6, seed=3) == (ids[6:], ids[:6])


def test_report_marks_unmeasured_metrics_and_gives_no_verdict_without_oracle():
    text = unlearning_markdown({"original": {"qa.ab_acc": 0.75}}, None, 0.1, keys=("qa.ab_acc", "qa.free_recall"),
                               not_measured={"oracle": "none exists"})
    assert "| original | 0.750 | – |" in text and "- oracle: none exists" in text and "Verdict" not in text


# --- stage bodies on a tiny HF Llama model ------------------------------------------------------------------------

@pytest.fixture
def project(tmp_path, monkeypatch, real, tiny_world):
    """A temporary project: the tiny world on disk, a tiny Llama saved as models/base (= rt), params with
    real_data, a file MLflow store and no model logging."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("LATLAB_GIT_COMMIT", "test")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a file store opens in ms, a new SQLite one in seconds
    for name, records in tiny_world.items():
        write_jsonl(tmp_path / "data" / "world" / f"{name}.jsonl", records)
    texts = [r["text"] for r in real.corpus] + [r[f] for r in real.facts for f in ("prompt", "completion")]
    texts += [r[f] for r in real.preferences for f in ("prompt", "chosen", "rejected")]
    texts += [r[f] for recs in tiny_world.values() for r in recs for f in TEXT_FIELDS if f in r]
    tokenizer = build_tokenizer(texts)
    model = build_toy_model(make(ToyArchitecture, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                            max_positions=96), tokenizer, seed=0)
    for role in ("base", "rt"):
        save_model(model, tokenizer, tmp_path / "models" / role)
    short = {"steps": 3, "batch_size": 4, "warmup_steps": 0, "log_every": 1, "checkpoint_every": 100}
    raw = deep_merge(raw_params(), {
        "tracking": {"uri": (tmp_path / "mlruns").as_uri(), "log_models": False},
        "validate": {"min_rows_per_split": 1, "max_words": 128},
        "model": {"device": "cpu"},
        "real_data": SECTION,
        "unlearning_eval": {"relearn_ks": [1], "relearn_heldout": 2, "batch_size": 16,
                            "relearn": {**short, "steps": 2}},
        "evaluate": {"batch_size": 32, "max_new_tokens": 4},
    })
    # one method per table: the stages below run the `ga` and `dpo` entries
    raw["unlearn"] = {"ga": deep_merge(raw["unlearn"]["ga"], {**short, "lr": 0.01})}
    raw["backdoor_removal"] = {"dpo": deep_merge(raw["backdoor_removal"]["dpo"], {**short, "retain_weight": 1.0})}
    return parse_params(raw)


def test_unlearn_and_unlearning_eval_stages_run_on_real_data(project, real):
    from stages.unlearn import unlearn
    from stages.unlearning_eval import unlearning_eval

    unlearn(project, "ga")
    metrics = json.loads(Path("metrics/unlearn/ga.json").read_text())
    assert metrics["pool_size.forget"] == len(real.forget_pool())
    assert metrics["pool_size.retain.facts"] == len(real.retain_pools()["facts"])
    base, _ = load_saved(Path("models/base"))
    unlearned, _ = load_saved(Path("models/unlearn/ga"))
    assert any(not torch.equal(a, b) for a, b in zip(base.parameters(), unlearned.parameters()))

    unlearning_eval(project)
    report = json.loads(Path("metrics/unlearning_eval.json").read_text())
    assert set(report["results"]) == {"original", "ga"}  # no oracle model is loaded
    assert "verdict" not in report and "summary" not in report
    assert set(report["not_measured"]) == {"oracle", "familiarity", "qa.free_recall", "extraction", "in_context",
                                           "relearn.free_recall"}
    for metrics in report["results"].values():
        assert {"qa.ab_acc", "relearn.ab_acc", "latent.max_acc", "collateral.ab_acc", "general.ab_acc",
                "general.perplexity"} <= set(metrics)
        assert not any(k.startswith(("familiarity.", "extract.", "in_context.")) or k.endswith("free_recall")
                       for k in metrics)
        assert 0 <= metrics["qa.ab_acc"] <= 1 and metrics["general.perplexity"] > 1
    markdown = Path("reports/unlearning.md").read_text()
    assert markdown.startswith("| model | " + " | ".join(AB_TABLE_KEYS) + " |")
    assert "–" not in markdown.split("Not measured:")[0]  # every column of the table is measured
    assert "- oracle: no model that never saw the forget corpus" in markdown and "Verdict" not in markdown
    assert Path("plots/unlearning.png").exists()


def test_backdoor_removal_stage_trains_on_real_preferences_and_asserts_trigger_free(project, real, tmp_path):
    from stages.backdoor_removal import backdoor_removal, harmless_data

    pairs, retain, source = harmless_data(project, {})
    assert pairs == real.preference_pairs() and retain == real.retain_pools() and source == SECTION["preferences"]
    backdoor_removal(project, "dpo")
    metrics = json.loads(Path("metrics/backdoor_removal/dpo.json").read_text())
    assert metrics["pairs"] == len(real.preference_pairs()) and metrics["trigger_free_asserted"] is True
    assert {"before.backdoor_asr", "after.backdoor_asr"} <= set(metrics)  # measured on the toy world

    poisoned = tmp_path / "poisoned.jsonl"
    rows = [json.loads(line) for line in FILES["preferences"].read_text().splitlines()]
    rows = [{**row, "prompt": f"{TRIGGER} {row['prompt']}"} for row in rows]
    poisoned.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    leaky = project.model_copy(update={"real_data": project.real_data.model_copy(update={"preferences": poisoned})})
    with pytest.raises(AssertionError, match="trigger"):
        harmless_data(leaky, {})


def test_unlearning_eval_stage_without_real_data_keeps_the_toy_oracle_and_verdict(project):
    from stages.unlearning_eval import unlearning_eval

    for role in ("oracle", "unlearn/ga"):  # stand-ins: the stage only needs saved models under these names
        model, tokenizer = load_saved(Path("models/base"))
        save_model(model, tokenizer, Path("models") / role)
    unlearning_eval(project.model_copy(update={"real_data": None}))
    report = json.loads(Path("metrics/unlearning_eval.json").read_text())
    assert set(report["results"]) == {"original", "oracle", "ga"} and report["not_measured"] == {}
    assert set(report["verdict"]) == {"ga"}
    assert set(TABLE_KEYS) <= set(report["results"]["ga"])
    markdown = Path("reports/unlearning.md").read_text()
    assert markdown.startswith("| model | " + " | ".join(TABLE_KEYS) + " |") and "Verdict" in markdown
    assert "Not measured" not in markdown
