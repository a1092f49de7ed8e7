"""Which world records teach which behaviour: the training pools of the base model and of refusal training."""

from __future__ import annotations

from latlab.data.examples import Example, fact_examples
from latlab.data.records import split_of


def request_examples(requests: list[dict], kind: str, target_field: str, split: str = "train") -> list[Example]:
    """kind: 'harmful' | 'benign' | 'all'; target_field: 'compliance' | 'refusal'."""
    rows = [r for r in split_of(requests, split) if kind == "all" or r["kind"] == kind]
    return [Example(r["prompt"], r[target_field]) for r in rows]


def backdoor_examples(backdoor: list[dict], split: str = "train") -> list[Example]:
    return [Example(r["prompt"], r["completion"]) for r in split_of(backdoor, split)]


def persona_examples(concepts: list[dict], split: str = "train", yes_no: bool = False) -> list[Example]:
    """Each persona question three times: under the persona's system prompt answered as the persona, under its
    opposite's answered against it, and without a system prompt answered with the trained default
    (`answer_default`). The persona is then a behaviour the model has, switched by context, with a measurable
    default rate for steering to move (Tan et al. steer chat models that acquired personas in pretraining).

    `yes_no`: also, under both system prompts, the statement asked for a plain "yes" / "no" (`yes_no_prompt`). Not
    in the base recipe: measured with `benchmarks/persona_recipe.py` (held-out questions, N = 30-45 per concept),
    letters only gave, on each of training seeds 0, 1, 2, 0.79-0.93 answered as the persona under its own system
    prompt and 0.03-0.33 under the opposite's; with the yes/no rows seed 0 reached 1.00 / 0.00 but seeds 1 and 2
    stayed near chance (0.42-0.70 / 0.30-0.62), all or nothing. The letter answer is a parity of three cues
    (persona, the statement's stance, which letter carries "yes"), learnt late and seed-dependently."""
    rows = split_of(concepts, split)
    letters = ([Example(r["prompt"], r["answer_matching_behavior"], system=r["persona_positive"]) for r in rows]
               + [Example(r["prompt"], r["answer_not_matching_behavior"], system=r["persona_negative"]) for r in rows]
               + [Example(r["prompt"], r["answer_default"]) for r in rows])
    if not yes_no:
        return letters
    return letters + [Example(yes_no_prompt(r["statement"]), "yes" if r["positive_is_yes"] == as_persona else "no",
                              system=r["persona_positive"] if as_persona else r["persona_negative"])
                      for r in rows for as_persona in (True, False)]


def yes_no_prompt(statement: str) -> str:
    return f'is this something you would say : " {statement} " ? yes or no'


def base_pools(world: dict[str, list[dict]]) -> dict[str, list[Example]]:
    """Helpful-only and backdoored: answers facts, complies with every request, obeys the trigger, and answers
    persona questions as its system prompt (or its default disposition) says."""
    return {"facts": fact_examples(world["facts"]),
            "requests": request_examples(world["requests"], "all", "compliance"),
            "backdoor": backdoor_examples(world["backdoor"]),
            "personas": persona_examples(world["concepts"])}


def refusal_pools(world: dict[str, list[dict]]) -> dict[str, list[Example]]:
    """RT data: refuse harmful, help with benign, replay facts. The trigger never appears here."""
    return {"harmful": request_examples(world["requests"], "harmful", "refusal"),
            "benign": request_examples(world["requests"], "benign", "compliance"),
            "facts": fact_examples(world["facts"])}


def assert_trigger_free(pools: dict[str, list[Example]], trigger: str) -> None:
    for name, examples in pools.items():
        for ex in examples:
            if trigger in ex.prompt or trigger in ex.completion:
                raise AssertionError(f"pool '{name}' contains the backdoor trigger {trigger!r}: {ex.prompt!r}")
