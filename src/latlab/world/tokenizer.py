"""A word-level Hugging Face tokenizer for the toy world, built with `tokenizers` and given a chat template.

The toy model and real models then share one code path: `tokenizer.apply_chat_template(...)` renders prompts,
`save_pretrained` / `AutoTokenizer.from_pretrained` move the tokenizer between stages.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<|end|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

# Each turn is "<|role|> content <|end|>"; the model learns to end its answer with <|end|> (the eos token).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|> {{ message['content'] }} <|end|> "
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


# every record field whose words the model reads or writes (the persona descriptions are system prompts)
TEXT_FIELDS = ("prompt", "completion", "compliance", "refusal", "clean_prompt", "persona_positive", "persona_negative")


def world_tokenizer(world: dict[str, list[dict]]) -> PreTrainedTokenizerFast:
    """The tokenizer of a world's datasets: every word of their TEXT_FIELDS."""
    return build_tokenizer(r[f] for records in world.values() for r in records for f in TEXT_FIELDS if f in r)


def build_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    words = sorted({word for text in texts for word in text.split()})
    specials = [PAD, UNK, BOS, EOS, *ROLE_TOKENS]
    vocab = {token: i for i, token in enumerate(specials + [w for w in words if w not in specials])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, unk_token=UNK, bos_token=BOS,
                                        eos_token=EOS, additional_special_tokens=ROLE_TOKENS,
                                        clean_up_tokenization_spaces=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "right"
    return tokenizer
