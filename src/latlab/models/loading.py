"""Load, build and save causal LMs: the toy Llama built from scratch, or a real model from a hub id, a local
directory or a GGUF file, all as `transformers` models with their tokenizer and chat template.

Weights are read as safetensors only (GGUF is dequantised by transformers through the `gguf` package), and
`trust_remote_code` stays off unless params ask for it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from latlab import parallel
from latlab.config import ModelConfig, ToyArchitecture
from latlab.models.source import ModelSourceError, check_source
from latlab.world.tokenizer import CHAT_TEMPLATE

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if parallel.launched() and name in ("auto", "cuda"):
        return parallel.device()  # each data-parallel process on its own GPU
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_toy_model(arch: ToyArchitecture, tokenizer, seed: int) -> LlamaForCausalLM:
    """A small Llama-architecture transformer with freshly initialised weights (seeded)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_heads,
        max_position_embeddings=arch.max_positions, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _ensure_chat_ready(tokenizer):
    # Base (non-chat) checkpoints have no template; the toy template keeps one rendering path for every model.
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def drop_gguf_quantizer(model):
    """Detach transformers' GGUF quantizer from a fully dequantised model; refuse one with weights still packed."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None or getattr(quantizer.quantization_config, "quant_method", None) != "gguf":
        return model
    if getattr(quantizer, "packed_modules", None):  # filled only when GgufLinear modules kept the blocks
        raise RuntimeError("the GGUF weights were loaded packed (GGUF kernels); load with "
                           "quantization_config=GgufConfig(dequantize=True) to cache or train them")
    quantizer.remove_quantization_config(model)
    return model


def load_pretrained(source: str, cfg: ModelConfig):
    """(model, tokenizer) from a local directory, a .gguf file or a hub id available offline."""
    check_source(cfg.updated(source=source))  # one line naming what is missing, before anything loads
    common = {"trust_remote_code": cfg.trust_remote_code, "revision": cfg.revision}
    path = Path(source)
    dtype = DTYPES[cfg.dtype]
    if source.endswith(".gguf") or cfg.gguf_file:
        gguf_path = path if source.endswith(".gguf") else path / cfg.gguf_file
        kwargs = {"gguf_file": gguf_path.name, **common}
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=dtype, **kwargs)
        # transformers keeps its GGUF quantizer on the dequantised model, which makes save_pretrained refuse it
        model = drop_gguf_quantizer(model)
    elif path.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(path, **common)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True, **common)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **common)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True, **common)
        except OSError as err:
            raise ModelSourceError(
                f"model.source: '{source}' is not a local directory or .gguf file, and the hub id is not in the "
                f"local Hugging Face cache (the pipeline runs offline): {str(err).splitlines()[0]}") from None
    return model, _ensure_chat_ready(tokenizer)


def frozen_copy(model):
    """A copy of the model in eval mode with every parameter frozen: the reference of DPO, NPO, WHP, RMU and LAT's
    KL retain term."""
    reference = copy.deepcopy(model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference


# how the tokenizer was loaded (transformers records it in tokenizer_config.json): not part of the model, and it
# differs between an offline and an online process, which would change the saved model's hash
LOAD_TIME_KEYS = ("local_files_only", "is_local")


def save_model(model, tokenizer, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    for key in LOAD_TIME_KEYS:
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.save_pretrained(out_dir)


def load_saved(model_dir: Path, device: str = "cpu", dtype: str = "float32"):
    """A model written by `save_model` (a pipeline stage output)."""
    if not (model_dir / "config.json").exists():
        raise ModelSourceError(f"{model_dir}: no saved model here (run the stage that produces it first)")
    tokenizer = _ensure_chat_ready(AutoTokenizer.from_pretrained(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype], use_safetensors=True)
    return model.to(resolve_device(device)), tokenizer
