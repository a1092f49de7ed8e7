"""Compile the tracr programs that serve as circuit ground truth nobody here planted (issue 19; Lindner et al. 2023,
"Tracr: Compiled Transformers as a Laboratory for Interpretability"; the ACDC paper's tracr tasks) and save their
weights as small safetensors with a JSON card, committed under src/latlab/interp/tracr_models/.

tracr needs jax and dm-haiku, which the project does not install: this is a one-off, run in its own environment:

    python3.11 -m venv /tmp/tracr && /tmp/tracr/bin/pip install tracr-pypi safetensors
    /tmp/tracr/bin/python scripts/compile_tracr.py          # writes src/latlab/interp/tracr_models/<program>.{safetensors,json}

The card holds the configuration, the residual-stream labels, the input and output encodings, the sha256 of the
weights file (checked on load by latlab.interp.tracr) and, for the inputs the tests use, tracr's own final residual
stream and decoded output, so the conversion to the project's Llama form can be checked without tracr installed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from pathlib import Path

# latlab itself is not installed in the tracr environment; its package init (stdlib only) applies the offline env
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import latlab  # noqa: E402,F401

import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from tracr.compiler import compiling  # noqa: E402
from tracr.compiler.lib import make_frac_prevs, make_reverse  # noqa: E402
from tracr.rasp import rasp  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "src" / "latlab" / "interp" / "tracr_models"
BOS = "BOS"
MAX_SEQ_LEN = 5
N_CHECK = 16  # inputs whose tracr residuals the card keeps


def programs():
    # the ACDC paper's two tracr tasks: the proportion of previous "x" tokens (numerical) and sequence reversal
    # (categorical)
    yield "frac_prevs", make_frac_prevs(rasp.tokens == "x"), ("w", "x", "y", "z")
    yield "reverse", make_reverse(rasp.tokens), ("a", "b", "c")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, program, vocab in programs():
        model = compiling.compile_rasp_to_model(program, vocab=set(vocab), max_seq_len=MAX_SEQ_LEN, compiler_bos=BOS)
        cfg = model.model_config
        tensors = {"token_embed": np.asarray(model.params["token_embed"]["embeddings"], dtype=np.float32),
                   "pos_embed": np.asarray(model.params["pos_embed"]["embeddings"], dtype=np.float32)}
        for layer in range(cfg.num_layers):
            for part, key in (("attn", "query"), ("attn", "key"), ("attn", "value"), ("attn", "linear"),
                              ("mlp", "linear_1"), ("mlp", "linear_2")):
                params = model.params[f"transformer/layer_{layer}/{part}/{key}"]
                for p in ("w", "b"):
                    tensors[f"layer_{layer}.{part}.{key}.{p}"] = np.asarray(params[p], dtype=np.float32)
        path = OUT / f"{name}.safetensors"
        save_file(tensors, str(path))
        # inputs of the full length and one shorter (the circuit tasks use the shorter: at full length reverse's
        # length head outputs what its zero ablation gives, see latlab.interp.tracr)
        picks = []
        for length in (MAX_SEQ_LEN, MAX_SEQ_LEN - 1):
            all_inputs = list(itertools.product(vocab, repeat=length))
            picks += [all_inputs[i] for i in rng.choice(len(all_inputs), size=N_CHECK // 2, replace=False)]
        checks = []
        for tokens in picks:
            out = model.apply([BOS, *tokens])
            checks.append({"tokens": list(tokens), "decoded": [None if v == BOS else v for v in out.decoded],
                           "final_residual": np.asarray(out.transformer_output[0]).round(6).tolist()})
        output = model.output_encoder
        card = {
            "program": name, "tracr": "tracr-pypi 1.0.0", "max_seq_len": MAX_SEQ_LEN, "bos": BOS,
            "num_layers": cfg.num_layers, "num_heads": cfg.num_heads, "key_size": cfg.key_size,
            "mlp_hidden_size": cfg.mlp_hidden_size, "causal": bool(cfg.causal), "layer_norm": bool(cfg.layer_norm),
            "activation": "relu", "residual_labels": list(model.residual_labels),
            "input_encoding": model.input_encoder.encoding_map,
            "output": {"kind": "categorical", "encoding": output.encoding_map} if output is not None and
            getattr(output, "encoding_map", None) else {"kind": "numerical"},
            "output_space": [label for label in model.residual_labels if label.split(":")[0] == program.label],
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "checks": checks,
        }
        (OUT / f"{name}.json").write_text(json.dumps(card, indent=1) + "\n")
        print(f"{name}: {cfg.num_layers} layers, residual {len(model.residual_labels)}, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
