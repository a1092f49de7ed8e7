"""The unit every trainer and scorer consumes: a prompt and the completion the model should (or should not) give.

It sits in `data`, below `world` and the real corpora that build it and `models` that encodes it, because it is a
record, not an encoding: `latlab.models.encoding` turns it into token ids through the model's chat template.
"""

from __future__ import annotations

from dataclasses import dataclass

from latlab.data.records import split_of


@dataclass(frozen=True)
class Example:
    prompt: str
    completion: str
    chat: bool = True  # rendered through the chat template; False: raw text continued after a space
    system: str | None = None


def fact_examples(facts: list[dict], split: str = "train") -> list[Example]:
    """Examples of the `facts` records of one split (toy-world facts and real multiple-choice questions alike)."""
    return [Example(r["prompt"], r["completion"], chat=r["chat"]) for r in split_of(facts, split)]
