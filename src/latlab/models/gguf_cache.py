"""Cache a GGUF model as a safetensors directory, so stages load a real model in seconds instead of dequantising.

transformers dequantises every GGUF tensor through the `gguf` package on each load (~30 s for SmolLM2-135M's Q4_1
file on one CPU thread); `save_pretrained` of the dequantised model gives a plain directory that
`latlab.models.loading.load_pretrained` reads directly. No maintained tool writes an HF safetensors directory from a
GGUF file, but transformers' GGUF loader plus `save_pretrained` is exactly that, so this module only adds the
provenance record (the file hash) that tells a stale cache from a fresh one, and one workaround: transformers 5.24
loads every GGUF through its `GgufHfQuantizer`, which refuses `save_pretrained` ("quantized with gguf and is not
serializable") even when it has unpacked every weight into plain dense tensors, as it does on CPU or without the
`kernels` package. `drop_gguf_quantizer` detaches it from such a model, so it saves (and trains) like any other.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from latlab.config import ModelConfig
from latlab.models.loading import drop_gguf_quantizer, load_pretrained, save_model

PROVENANCE = "gguf_source.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_cached(gguf_path: Path, out_dir: Path) -> bool:
    """True when `out_dir` holds a cache written from this very GGUF file (same bytes)."""
    record = Path(out_dir) / PROVENANCE
    if not record.is_file() or not any(Path(out_dir).glob("*.safetensors")):
        return False
    return json.loads(record.read_text()).get("sha256") == file_sha256(Path(gguf_path))


def cache_gguf_as_safetensors(gguf_path: str | Path, out_dir: str | Path, dtype: str = "float32",
                              force: bool = False) -> Path:
    """Dequantise `gguf_path` once and write model, tokenizer (with chat template) and provenance to `out_dir`."""
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not force and is_cached(gguf_path, out_dir):
        return out_dir
    model, tokenizer = load_pretrained(str(gguf_path), ModelConfig.for_local_file(str(gguf_path), dtype))
    save_model(model, tokenizer, out_dir)
    (out_dir / PROVENANCE).write_text(json.dumps(
        {"gguf_file": gguf_path.name, "sha256": file_sha256(gguf_path), "dtype": dtype,
         "parameters": sum(p.numel() for p in model.parameters())}, indent=2))
    return out_dir
