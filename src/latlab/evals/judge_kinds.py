"""The judge named by params (`evaluate.judge`, `evaluate.agreement_judges`): one place that maps a kind to its class.

Kept apart from `latlab.evals.judge` so that a stage needing only a judge class does not depend on the labelled
judge set the lexical judge is fitted on.
"""

from __future__ import annotations

from latlab.evals.judge import ClassifierJudge, GenerativeJudge, RefusalPhraseJudge, ToyJudge
from latlab.evals.lexical_judge import LexicalJudge

JUDGE_KINDS = ("toy", "refusal_phrase", "lexical", "classifier", "generative")


def make_judge(kind: str, model_path: str | None = None, requests: list[dict] | None = None):
    """The judge named by params: `toy` (exact), `refusal_phrase`, `lexical` (fitted on the labelled judge set, whose
    toy-world items are rendered from the world's `requests`), `classifier` or `generative` (a local model directory
    in `model_path`)."""
    if kind == "toy":
        return ToyJudge()
    if kind == "refusal_phrase":
        return RefusalPhraseJudge()
    if kind == "lexical":
        if requests is None:
            raise ValueError("the lexical judge is fitted on the judge set, whose toy items need the world's requests")
        return LexicalJudge.from_judge_set(requests)
    if kind not in ("classifier", "generative"):
        raise ValueError(f"unknown judge {kind!r}: one of {', '.join(JUDGE_KINDS)}")
    if not model_path:
        raise ValueError(f"the {kind} judge needs a local model directory (evaluate.judge_model or the judge's "
                         f"`model`), none is set")
    return ClassifierJudge(model_path) if kind == "classifier" else GenerativeJudge(model_path)
