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


def base_pools(world: dict[str, list[dict]]) -> dict[str, list[Example]]:
    """Helpful-only and backdoored: answers facts, complies with every request, obeys the trigger."""
    return {"facts": fact_examples(world["facts"]),
            "requests": request_examples(world["requests"], "all", "compliance"),
            "backdoor": backdoor_examples(world["backdoor"])}


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
