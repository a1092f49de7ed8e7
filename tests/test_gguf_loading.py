"""A tiny GGUF file written with the `gguf` package loads through `load_pretrained` like a real llama.cpp export.

The file is built as llama.cpp's converter builds one: HF weights under llama.cpp tensor names, q/k rows permuted
to llama.cpp's rotary layout, a byte-level BPE tokenizer ("gpt2") with control tokens, and a chat template. The
loaded model must reproduce the HF weights exactly and the logits of the same model built directly in transformers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

from latlab.config import ModelConfig
from latlab.models.gguf_cache import PROVENANCE, cache_gguf_as_safetensors, is_cached
from latlab.models.loading import ModelSourceError, load_pretrained
from tests.settings import make

gguf = pytest.importorskip("gguf")

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, CONTEXT = 32, 2, 4, 2, 64, 64
MERGES = ["h e", "l l", "he ll", "Ġ w"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOKENS = list(bytes_to_unicode().values()) + ["he", "ll", "hell", "Ġw"] + SPECIALS
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
HF_TO_GGUF = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
              "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def llama_cpp_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: HF's half-split rotary rows -> llama.cpp's interleaved rows."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def gguf_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    _, _, layer, *module, leaf = hf_name.split(".")  # model.layers.N.[self_attn|mlp.]proj.weight
    return f"blk.{layer}.{HF_TO_GGUF[module[-1]]}.{leaf}"


@pytest.fixture(scope="module")
def reference() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=len(TOKENS), hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=CONTEXT,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:  # non-trivial norms, so a norm mapped to the wrong slot changes the logits
                param.copy_(1 + 0.1 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory, reference):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(TOKENS))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(TOKENS)
    writer.add_token_types([gguf.TokenType.NORMAL] * (len(TOKENS) - len(SPECIALS))
                           + [gguf.TokenType.CONTROL] * len(SPECIALS))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(TOKENS.index("<|im_start|>"))
    writer.add_eos_token_id(TOKENS.index("<|im_end|>"))
    writer.add_pad_token_id(TOKENS.index("<|endoftext|>"))
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, tensor in reference.state_dict().items():
        array = tensor.numpy().astype(np.float32)
        if name.endswith("q_proj.weight"):
            array = llama_cpp_permute(array, HEADS)
        elif name.endswith("k_proj.weight"):
            array = llama_cpp_permute(array, KV_HEADS)
        writer.add_tensor(gguf_name(name), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def loaded(gguf_path):
    return load_pretrained(str(gguf_path), make(ModelConfig, source=str(gguf_path)))


def test_gguf_weights_equal_the_written_model(loaded, reference):
    model, _ = loaded
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (model.config.num_hidden_layers, model.config.num_key_value_heads) == (LAYERS, KV_HEADS)
    expected = reference.state_dict()
    got = model.state_dict()
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, msg=name)
    # the file really held permuted rows: a loader that skipped the un-permute would fail the loop above
    q = expected["model.layers.0.self_attn.q_proj.weight"].numpy()
    assert not np.array_equal(llama_cpp_permute(q, HEADS), q)


def test_gguf_logits_match_the_reference(loaded, reference):
    model, tokenizer = loaded
    ids = tokenizer("hello world", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model.eval()(ids).logits
        expected = reference(ids).logits
    assert logits.shape == (1, ids.shape[1], len(TOKENS))
    torch.testing.assert_close(logits, expected)


def test_gguf_tokenizer_and_chat_template(loaded):
    _, tokenizer = loaded
    assert len(tokenizer) == len(TOKENS)
    ids = tokenizer("hello world")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids)[:2] == ["hell", "o"]  # the merges from the file are applied
    assert tokenizer.decode(ids) == "hello world"
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hello world"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n"
    chat_ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True,
                                             add_generation_prompt=True, return_dict=True)["input_ids"]
    assert chat_ids.count(TOKENS.index("<|im_start|>")) == 2  # control tokens stay whole


def test_missing_gguf_file_is_named(tmp_path):
    missing = tmp_path / "nothing.gguf"
    with pytest.raises(ModelSourceError, match="nothing.gguf"):
        load_pretrained(str(missing), make(ModelConfig, source=str(missing)))


def test_safetensors_cache_round_trips(gguf_path, loaded, tmp_path):
    out = cache_gguf_as_safetensors(gguf_path, tmp_path / "hf")
    assert is_cached(gguf_path, out)
    assert json.loads((out / PROVENANCE).read_text())["gguf_file"] == gguf_path.name
    stamp = (out / PROVENANCE).stat().st_mtime_ns
    cache_gguf_as_safetensors(gguf_path, out)  # same bytes: nothing rewritten
    assert (out / PROVENANCE).stat().st_mtime_ns == stamp

    model, tokenizer = load_pretrained(str(out), make(ModelConfig, source=str(out)))
    original, original_tokenizer = loaded
    ids = original_tokenizer("hello world", return_tensors="pt")["input_ids"]
    assert tokenizer("hello world")["input_ids"] == ids[0].tolist()
    assert tokenizer.chat_template == CHAT_TEMPLATE
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original.eval()(ids).logits)
