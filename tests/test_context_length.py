"""A prompt longer than the model's positions is refused the same way on every path that runs the model on text:
generation (direct and prefill attacks), completion scoring (A/B choice, perplexity, refusal score) and training
encodes, with a ContextLengthError that names the prompt, its length and the limit; prompts that fit are untouched."""

import pytest

from latlab.attacks.direct import direct_attack
from latlab.attacks.prefill import prefill_attack
from latlab.attacks.refusal_direction import refusal_score
from latlab.config import PrefillConfig, ToyArchitecture
from latlab.data.examples import Example
from latlab.evals.unlearning import perplexity
from latlab.models.encoding import ContextLengthError, encode_all
from latlab.models.generation import choose, completion_logprobs, generate
from latlab.models.loading import build_toy_model
from stages.common import USER_ERRORS
from tests.settings import make

LIMIT = 16
LONG = " ".join(["sure"] * 40)  # one token per word: far past LIMIT positions
SHORT = "hello"


@pytest.fixture
def short_model(tiny_tokenizer):
    return build_toy_model(make(ToyArchitecture, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                max_positions=LIMIT), tiny_tokenizer, seed=0)


def _raises_for_long(call):
    with pytest.raises(ContextLengthError) as caught:
        call()
    err = caught.value
    # attacks that write into the chat text themselves (prefill) generate from rendered text: that text is named
    assert err.limit == LIMIT and err.length > LIMIT and LONG in err.prompt
    message = str(err)
    assert f"exceeds the model's {LIMIT} positions" in message
    assert "sure sure sure" in message and message.endswith("...'")  # the prompt is quoted, truncated


@pytest.mark.parametrize("name, call", [
    ("generate", lambda m, t: generate(m, t, [SHORT, LONG], max_new_tokens=2)),
    ("direct attack", lambda m, t: direct_attack(m, t, [{"prompt": LONG}], max_new_tokens=2)),
    ("prefill attack", lambda m, t: prefill_attack(m, t, [{"prompt": LONG, "compliance": "sure . first"}],
                                                   make(PrefillConfig, words=2), max_new_tokens=2)),
    ("choose", lambda m, t: choose(m, t, [LONG], [["A", "B"]])),
    ("completion_logprobs", lambda m, t: completion_logprobs(m, t, [Example(SHORT, "A"), Example(LONG, "A")])),
    ("perplexity", lambda m, t: perplexity(m, t, [Example(LONG, "sorry")])),
    ("refusal score", lambda m, t: refusal_score(m, t, [{"prompt": LONG, "refusal": "sorry"}], batch_size=4)),
])
def test_every_path_refuses_a_prompt_past_the_context(short_model, tiny_tokenizer, name, call):
    _raises_for_long(lambda: call(short_model, tiny_tokenizer))


def test_generation_counts_the_tokens_it_will_generate(short_model, tiny_tokenizer):
    assert len(generate(short_model, tiny_tokenizer, [SHORT], max_new_tokens=2)) == 1  # fits: runs as before
    with pytest.raises(ContextLengthError, match=rf"tokens \+ {LIMIT} to generate exceeds the model's {LIMIT}"):
        generate(short_model, tiny_tokenizer, [SHORT], max_new_tokens=LIMIT)


def test_training_encodes_refuse_the_same_way(tiny_tokenizer):
    with pytest.raises(ContextLengthError, match=r"prompt \+ completion of \d+ tokens exceeds .* \(and 1 more\)"):
        encode_all(tiny_tokenizer, [Example(SHORT, "sure"), Example(LONG, "sure"), Example(LONG, "no")], LIMIT)


def test_stages_report_it_as_a_user_error():
    assert issubclass(ContextLengthError, ValueError) and issubclass(ContextLengthError, USER_ERRORS)
