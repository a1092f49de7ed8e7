"""tracr-compiled programs as circuit ground truth (issue 19): the committed weights are the compiled ones, the Llama
conversion computes what tracr computed, and ACDC / EAP recover the compiled data flow on a real run."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from latlab.config import AcdcConfig
from latlab.interp.circuits import validate_on_tracr
from latlab.interp.patching import EdgeModel
from latlab.interp.tracr import MODELS_DIR, PROGRAMS, encode, load_program, tracr_llama, truth_mask
from tests.settings import make


@pytest.fixture(scope="module", params=PROGRAMS)
def compiled(request):
    program = load_program(request.param)
    return program, tracr_llama(program)


def test_converted_model_computes_what_tracr_computed(compiled):
    program, model = compiled
    em = EdgeModel(model)
    for length in (program.card["max_seq_len"], program.card["max_seq_len"] - 1):
        checks = [c for c in program.card["checks"] if len(c["tokens"]) == length]
        ids = encode(program, [c["tokens"] for c in checks])
        out, logits = em.clean_run(ids)
        # the residual stream is the sum of the sender outputs; tracr's was stored to 6 decimals
        want = torch.tensor([c["final_residual"] for c in checks], dtype=torch.float64)
        assert torch.allclose(out.sum(1), want, atol=1e-6)
        decoded = [c["decoded"][1:] for c in checks]
        if program.card["output"]["kind"] == "categorical":  # reverse reads later positions: not causal
            names = {v: k for k, v in program.card["output"]["encoding"].items()}
            n_out = len(names)
            assert [[names[int(i)] for i in row] for row in logits[:, 1:, :n_out].argmax(-1)] == decoded
        else:
            assert torch.allclose(logits[:, 1:, 0] / 10, torch.tensor(decoded, dtype=torch.float64), atol=1e-6)
        with torch.no_grad():
            assert torch.allclose(model(ids).logits, logits, atol=1e-5)  # HF's forward agrees


def test_frac_prevs_ground_truth_is_the_programs_data_flow():
    program = load_program("frac_prevs")
    graph = EdgeModel(tracr_llama(program)).graph
    truth = truth_mask(program, graph)
    # MLP 0 computes tokens == "x" (numerical map); head 1.0 selects previous indices (q and k read the position
    # embedding) and averages MLP 0's output; the unembedding reads the head's output
    assert [e.label for e, t in zip(graph.edges, truth) if t] == [
        "embed->m0", "embed->a1.0.q", "embed->a1.0.k", "m0->a1.0.v", "a1.0->resid_final"]


def test_changed_weights_fail_the_checksum(tmp_path):
    for suffix in (".json", ".safetensors"):
        shutil.copy(MODELS_DIR / f"reverse{suffix}", tmp_path / f"reverse{suffix}")
    data = bytearray((tmp_path / "reverse.safetensors").read_bytes())
    data[-1] ^= 0x01  # one bit of the last weight
    (tmp_path / "reverse.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="reverse.safetensors: sha256"):
        load_program("reverse", tmp_path)
    with pytest.raises(ValueError, match="unknown tracr program"):
        load_program("sort")


def test_inputs_of_mixed_length_are_refused():
    program = load_program("reverse")
    with pytest.raises(ValueError, match="one length"):
        encode(program, [["a", "b"], ["a", "b", "c"]])


def test_acdc_and_eap_recover_the_compiled_circuits(tmp_path):
    cfg = make(AcdcConfig)
    frac = validate_on_tracr(cfg, tmp_path, "frac_prevs")
    assert frac["truth_edges"] == frac["exercised_edges"] == 5
    assert frac["acdc_auc"] == frac["eap_auc"] == frac["eap_ig_auc"] == 1.0
    rev = validate_on_tracr(cfg, tmp_path, "reverse")
    # 13 compiled edges, 3 inert on every input (the q and k of the attend-to-all length head, and the query's BOS
    # fallback): ACDC finds exactly the other 10 at the default tau and ranks them first
    assert (rev["truth_edges"], rev["exercised_edges"]) == (13, 10)
    assert rev["exercised.acdc_auc"] == 1.0 and rev["circuit_fpr"] == 0.0
    assert rev["circuit_tpr"] == pytest.approx(10 / 13)
    assert rev["acdc_auc"] < 1.0  # the inert edges cannot be found by an effect-based method
    assert (tmp_path / "tracr_reverse_roc.png").stat().st_size > 0
    assert np.isfinite(rev["exercised.eap_auc"])
