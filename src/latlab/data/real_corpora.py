"""Real forget / retain data for unlearning and backdoor removal: the files named in params `real_data`, read by
latlab.data.loaders, stopped by the GX gate when malformed, and turned into what latlab.world.curriculum_unlearning
gives the same trainers and evaluations on the toy world: a forget pool, retain pools, A/B question records per
domain, held-out retain text and harmless preference pairs.

The layout follows WMDP (Li et al. 2024): forget and retain corpora of running text to train on, multiple-choice
questions to evaluate with. Training-split questions of the forget and retain domains join the training pools, as the
toy world's facts do; the evaluations read the test split, whose questions no pool contains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from latlab.config import ConfigError, RealDataConfig, ValidateConfig
from latlab.data.examples import Example, fact_examples
from latlab.data.loaders import DataFormatError, load_ab_questions, load_corpus, load_preferences
from latlab.data.records import split_of
from latlab.data.validation import raise_on_failure, validate_datasets

# Leading words of a corpus chunk that serve as its prompt: the trainers put the loss on completion tokens only, so
# this keeps most of the text trained on while every chunk still has context (the toy passages open with a statement).
PROMPT_WORDS = 8
# Why unlearning_eval has no oracle and no removed/suppressed verdict on real data.
NO_ORACLE = ("no model that never saw the forget corpus exists (the toy oracle is the base recipe trained from "
             "scratch without the domain), so the removed/suppressed verdict is not computed")
# Domain of each question file in the `facts` schema: the evaluations' default domain names (UnlearnEvalConfig).
QUESTION_DOMAINS = {"forget_questions": "forget", "related_questions": "related", "retain_questions": "general"}


def corpus_examples(corpus: list[dict], domain: str, split: str = "train") -> list[Example]:
    """Completion-style examples from the chunks of one corpus (domain forget or retain) in `split`."""
    examples = []
    for record in split_of(corpus, split):
        if record["domain"] == domain:
            words = record["text"].split()
            cut = min(PROMPT_WORDS, max(1, len(words) // 2))
            examples.append(Example(" ".join(words[:cut]), " ".join(words[cut:]), chat=False))
    return examples


@dataclass(frozen=True)
class RealCorpora:
    corpus: list[dict]  # `corpus` records, domains forget / retain
    facts: list[dict]  # A/B `facts` records, domains forget / related / general
    preferences: list[dict]  # `preferences` records; empty without a preferences file

    def questions(self, domain: str) -> list[dict]:
        return [r for r in self.facts if r["domain"] == domain]

    def forget_pool(self) -> list[Example]:
        """Forget text and forget questions of the training split (the toy's pool: facts and passages)."""
        return corpus_examples(self.corpus, "forget") + fact_examples(self.questions("forget"))

    def retain_pools(self) -> dict[str, list[Example]]:
        """Retain text and general questions under the toy's name `facts`, the pool `mix_retain_facts` weighs.
        There is no benign-request pool, so `mix_retain_benign` has nothing to weigh."""
        return {"facts": corpus_examples(self.corpus, "retain") + fact_examples(self.questions("general"))}

    def evaluation_world(self) -> dict[str, list[dict]]:
        """The records latlab.evals.unlearning reads: A/B questions only (no free-form answers, no requests)."""
        return {"facts": self.facts}

    def retain_text(self, split: str = "test") -> list[Example]:
        """Held-out retain text, for the general perplexity of evaluation 8."""
        return corpus_examples(self.corpus, "retain", split)

    def preference_pairs(self, split: str = "train") -> list[tuple[str, str, str]]:
        return [(r["prompt"], r["chosen"], r["rejected"]) for r in split_of(self.preferences, split)]


def _read(key: str, loader: Callable[..., list[dict]], path: Path, *args, **kwargs) -> list[dict]:
    """A loader's format error as a params error naming the key (the file and column are in the message)."""
    try:
        return loader(path, *args, **kwargs)
    except DataFormatError as err:
        raise ConfigError(f"params.yaml: real_data.{key}: {err}") from None


def load_real_corpora(cfg: RealDataConfig, validate: ValidateConfig, seed: int = 0) -> RealCorpora:
    """Every file of the section, split deterministically from `seed` and passed through the GX gate
    (DataValidationError naming the dataset, the expectation and offending rows)."""
    corpus = [r for key, domain in (("forget_corpus", "forget"), ("retain_corpus", "retain"))
              for r in _read(key, load_corpus, getattr(cfg, key), domain, cfg.chunk_words, seed=seed)]
    facts = [r for key, domain in QUESTION_DOMAINS.items() if getattr(cfg, key) is not None
             for r in _read(key, load_ab_questions, getattr(cfg, key), domain, seed=seed)]
    preferences = _read("preferences", load_preferences, cfg.preferences, "harmless", seed=seed) \
        if cfg.preferences is not None else []
    datasets = {"corpus": corpus, "facts": facts, **({"preferences": preferences} if preferences else {})}
    sources = {"corpus": [cfg.forget_corpus, cfg.retain_corpus], "preferences": cfg.preferences,
               "facts": [getattr(cfg, key) for key in QUESTION_DOMAINS if getattr(cfg, key) is not None]}
    raise_on_failure(validate_datasets(datasets, validate, sources))
    return RealCorpora(corpus, facts, preferences)
