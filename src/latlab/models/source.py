"""What `model.source` names, found out without loading it: a local directory, a GGUF file or a hub id in the local
Hugging Face cache, whether it holds a loadable model (weights, config, tokenizer) and how many decoder blocks it has.

No torch or transformers import: the params check (`python -m latlab.check`) runs this before DVC touches anything,
and `latlab.models.loading` runs it before loading, so a bad source fails in one line naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

from latlab.config import ModelConfig

# files a transformers tokenizer can be loaded from (one of them is enough)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
# config.json keys that hold the number of decoder blocks, by architecture family
DEPTH_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


class ModelSourceError(ValueError):
    """`model.source` names nothing loadable offline."""


def _cached_config(source: str, revision: str | None) -> Path | None:
    """config.json of hub id `source` in the local Hugging Face cache (never the network), or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(source, "config.json", revision=revision)
    except ValueError:  # not a valid repo id (e.g. an absolute path)
        return None
    return Path(found) if isinstance(found, str) else None


def check_source(cfg: ModelConfig) -> Path | None:
    """The config.json that `cfg.source` will load (None for the toy model and GGUF files); raises ModelSourceError
    with one line naming the source and what is missing."""
    source = cfg.source
    if source == "toy":
        return None
    path = Path(source)
    if source.endswith(".gguf") or cfg.gguf_file:
        gguf_path = path if source.endswith(".gguf") else path / cfg.gguf_file
        if not gguf_path.is_file():
            raise ModelSourceError(f"model.source: GGUF file not found: {gguf_path}")
        return None
    if path.is_dir():
        if not any(path.glob("*.safetensors")):
            raise ModelSourceError(f"model.source: {path} has no *.safetensors weights (pickled weights are refused)")
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model.source: {path} has weights but no config.json")
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise ModelSourceError(f"model.source: {path} has weights and config.json but no tokenizer "
                                   f"({', '.join(TOKENIZER_FILES[:3])})")
        return path / "config.json"
    if path.exists():
        raise ModelSourceError(f"model.source: {path} is a file, not a model directory or a .gguf file")
    cached = _cached_config(source, cfg.revision)
    if cached is None:
        raise ModelSourceError(f"model.source: '{source}' is not a local directory or .gguf file, and the hub id is "
                               "not in the local Hugging Face cache (the pipeline runs offline)")
    return cached


def model_depth(cfg: ModelConfig) -> int | None:
    """Decoder blocks of the model `cfg` describes: model.toy.num_layers, or config.json of the directory / cached
    hub id; None when unknown (a GGUF file, an unreadable config). Raises ModelSourceError for a bad source."""
    if cfg.source == "toy":
        return cfg.toy.num_layers if cfg.toy is not None else None
    config_file = check_source(cfg)
    if config_file is None:
        return None
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelSourceError(f"model.source: {config_file}: not valid JSON ({err})") from None
    for scope in (config, config.get("text_config") or {}):  # multimodal configs nest the language model's
        for key in DEPTH_KEYS:
            if isinstance(scope.get(key), int):
                return scope[key]
    return None
