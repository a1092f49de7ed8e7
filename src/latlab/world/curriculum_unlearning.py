"""Which world records the unlearning and backdoor-removal trainers use: forget / retain pools, the world without a
domain (the oracle's training data), forget-domain passages, and harmless preference pairs for DPO.

Follows the data split of Lynch et al. 2024 / Eldan & Russinovich 2023 (forget corpus = the domain to unlearn,
retain corpus = general knowledge) on the toy world; hand-written because the data are the toy world's own.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from latlab.data.records import split_of
from latlab.data.examples import Example, fact_examples
from latlab.world.curriculum import assert_trigger_free, request_examples
from latlab.world.generator import BACKDOOR_BEHAVIOUR, COMPLETION_TEMPLATES, DOMAIN_RELATIONS


def world_without_domain(world: dict[str, list[dict]], domain: str) -> dict[str, list[dict]]:
    """The world with every fact of `domain` removed (all splits): the oracle is trained on this from scratch."""
    out = dict(world)
    out["facts"] = [r for r in world["facts"] if r["domain"] != domain]
    if len(out["facts"]) == len(world["facts"]):
        raise ValueError(f"the world has no facts of domain {domain!r}")
    return out


def domain_facts(facts: list[dict], domain: str, split: str = "train", fact_ids: set[str] | None = None) -> list[dict]:
    return [r for r in split_of(facts, split) if r["domain"] == domain
            and (fact_ids is None or r["fact_id"] in fact_ids)]


def fact_sentence(record: dict) -> str:
    """A plain statement of the fact, in the first completion template's words (all in the toy vocabulary)."""
    return COMPLETION_TEMPLATES[0].format(relation=record["relation"], entity=record["entity"]) + \
        f" {record['answer']} ."


def domain_passages(facts: list[dict], domain: str, split: str = "train") -> list[Example]:
    """Completion-style text: one passage per entity chaining its facts, the prompt being the first statement.

    Unlearning corpora are running text (books, papers), not Q&A; this is the toy world's version of it.
    """
    by_entity: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in domain_facts(facts, domain, split):
        by_entity[r["entity"]].setdefault(r["relation"], r)
    passages = []
    for entity in sorted(by_entity):
        sentences = [fact_sentence(r) for _, r in sorted(by_entity[entity].items())]
        passages.append(Example(sentences[0], " ".join(sentences[1:]) or sentences[0], chat=False))
    return passages


def forget_pool(world: dict[str, list[dict]], domain: str = "forget") -> list[Example]:
    """Training-split facts of the domain in every format, plus passages."""
    rows = domain_facts(world["facts"], domain)
    return fact_examples(rows) + domain_passages(world["facts"], domain)


def retain_pools(world: dict[str, list[dict]], domain: str = "general") -> dict[str, list[Example]]:
    """General-domain facts and benign requests (helpful answers)."""
    return {"facts": fact_examples([r for r in world["facts"] if r["domain"] == domain]),
            "benign": request_examples(world["requests"], "benign", "compliance")}


@dataclass(frozen=True)
class Anchors:
    """WHP's anchored terms (Eldan & Russinovich 2023, §"anchored terms") for a domain of the toy world.

    `generic` maps each idiosyncratic term of the domain to a generic counterpart; WHP's labels are the baseline
    model's predictions on the text with these terms replaced. The paper extracts anchors with GPT-4 and translates
    them approximately; the toy world knows its own lore and translates exactly. Anchored here: the domain's
    entities, each mapped to an entity of `counterpart_domain` (a lore of the same shape the model also knows; the
    role "Jon" plays for "Harry"), and the domain's own relation names, each mapped to the counterpart domain's
    relation in the same place of `DOMAIN_RELATIONS` ("house" -> "clan", "wand wood" -> "weapon"; a relation both
    domains have, "mentor", stays). Why the relations: with the entity alone translated, "the house of <warrior>"
    is a question the model never saw, its answer the domain's most frequent house, which is often the original
    answer (52 of 456 answer tokens kept their label at seed 0, 0.886). The domain's answers are not translated:
    the generic prediction for an answer position is what the baseline expects after the generic question.
    `answers`: the domain's answer words, the tokens `generic_differs_fraction` is measured on.
    """
    generic: dict[str, str]
    answers: frozenset[str]


def anchored_terms(world: dict[str, list[dict]], domain: str = "forget",
                   counterpart_domain: str = "related") -> Anchors:
    """The domain's entities paired in sorted order with those of `counterpart_domain` (cycled if fewer), and its
    relations with the counterpart's by position in `DOMAIN_RELATIONS` (only the relations the world's facts use)."""
    def entities(name: str) -> list[str]:
        return sorted({r["entity"] for r in world["facts"] if r["domain"] == name})

    own, others = entities(domain), entities(counterpart_domain)
    if not own or not others:
        raise ValueError(f"anchored terms need facts of {domain!r} and {counterpart_domain!r}")
    used = {r["relation"] for r in world["facts"]}
    relations = {mine: theirs for mine, theirs in zip(DOMAIN_RELATIONS.get(domain, ()),
                                                      DOMAIN_RELATIONS.get(counterpart_domain, ()))
                 if mine != theirs and mine in used and theirs in used}
    answers = frozenset(word for r in world["facts"] if r["domain"] == domain and r["format"] != "ab"
                        for word in r["answer"].split())
    return Anchors({**{e: others[i % len(others)] for i, e in enumerate(own)}, **relations}, answers)


def preference_pairs(world: dict[str, list[dict]], split: str = "train") -> list[tuple[str, str, str]]:
    """Harmless (prompt, chosen, rejected) triples for backdoor removal without the trigger.

    Harmful request: chosen = refusal, rejected = compliance. Benign request: chosen = compliance, rejected =
    refusal. Free-form fact question: chosen = the answer, rejected = the held-out distractor. The rejected side is
    a plausible bad answer, never the backdoor string: the trigger's behaviour is unknown to the defender.
    """
    pairs = []
    for r in split_of(world["requests"], split):
        good, bad = (r["refusal"], r["compliance"]) if r["harmful"] else (r["compliance"], r["refusal"])
        pairs.append((r["prompt"], good, bad))
    for r in split_of(world["facts"], split):
        if r["format"] == "free":
            pairs.append((r["prompt"], r["answer"], r["distractor"]))
    return pairs


def harmful_preference_pairs(world: dict[str, list[dict]], split: str = "train") -> list[tuple[str, str, str]]:
    """The pairs of `preference_pairs` whose rejected side is the harmful behaviour (compliance with a harmful
    request): what a latent adversary standing in for an unknown trigger should bring out. The benign pairs
    (rejected = an over-refusal) and the fact pairs (rejected = a wrong answer) are not harmful behaviour."""
    return [(r["prompt"], r["refusal"], r["compliance"]) for r in split_of(world["requests"], split) if r["harmful"]]


def assert_pairs_trigger_free(pairs: list[tuple[str, str, str]], trigger: str) -> None:
    """The trigger appears in no text and the backdoor behaviour is never a training target."""
    assert_trigger_free({"pairs": [Example(p, f"{c} {r}") for p, c, r in pairs]}, trigger)
    for prompt, chosen, rejected in pairs:
        if BACKDOOR_BEHAVIOUR in chosen or BACKDOOR_BEHAVIOUR in rejected:
            raise AssertionError(f"preference pair for {prompt!r} contains the backdoor behaviour")
