"""Training methods and metrics: every method trains; GroupDRO vs ERM on a deliberately spurious tiny split."""

import numpy as np
import pytest
import torch

from latlab.vision.benchmark import evaluate, generate_split, training_data
from latlab.vision.methods import train_method
from latlab.vision.metrics import counterfactual_flip_rate, group_table, summarise, worst_group_accuracy
from latlab.vision.models import build_model
from latlab.config import MethodHparams, RenderConfig, SpawriousDataConfig, SpawriousTrainConfig
from tests.settings import make

METHODS = ["erm", "groupdro", "irm", "vrex", "coral", "jtt", "mixup"]


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    cfg = make(SpawriousDataConfig, per_env_total=40, test_per_group=25, seed=0, render=make(RenderConfig, image_size=16))
    data = generate_split("o2o_easy", cfg)
    return data, *training_data(data)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_logs(method, tiny):
    data, train, vocab = tiny
    logged = []
    hp = make(MethodHparams, irm_anneal_steps=2, vrex_anneal_steps=2, jtt_identification_steps=2)
    model = train_method(method, train, make(SpawriousTrainConfig, steps=4, width=4, batch_size=16, log_every=1), hp,
                         len(vocab), log=lambda metrics, step: logged.append((step, metrics)))
    before = {k: v.clone() for k, v in build_model("small_cnn", 4, 4).state_dict().items()}
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if v.is_floating_point())
    assert all(np.isfinite(m.get("loss", 0.0)) for _, m in logged) and len(logged) >= 4
    result = evaluate(model, data)
    assert 0 <= result["worst_group_accuracy"] <= result["average_accuracy"] <= 1
    assert 0 <= result["counterfactual_invariance"] <= 1


def test_unknown_method_is_rejected(tiny):
    _, train, vocab = tiny
    with pytest.raises(ValueError, match="unknown method"):
        train_method("dann", train, make(SpawriousTrainConfig, steps=1), make(MethodHparams), len(vocab))


def test_groupdro_beats_erm_on_worst_group(tiny):
    """o2o_easy at 16x16, 40 images per breed and environment: 3 (env 0) and 13 (env 1) per breed off the
    spurious background. Measured over data/training seeds 0-3 ERM's worst group is 0.00 every time and GroupDRO's
    0.12-0.32, so this fixed-seed comparison is not a lucky draw."""
    data, train, vocab = tiny
    cfg = make(SpawriousTrainConfig, steps=150, width=8, batch_size=32, seed=0)
    results = {m: evaluate(train_method(m, train, cfg, make(MethodHparams), len(vocab)), data) for m in ("erm", "groupdro")}
    assert results["groupdro"]["worst_group_accuracy"] > results["erm"]["worst_group_accuracy"]
    # the split really is spurious: ERM fits training data yet fails a test group
    assert evaluate(train_method("erm", train, cfg, make(MethodHparams), len(vocab)), data, "train")[
        "average_accuracy"] > 0.95


def test_metrics_on_a_hand_example():
    pred = np.array([0, 0, 1, 1, 2, 2])
    label = np.array([0, 0, 1, 0, 2, 2])
    groups = ["a", "a", "b", "b", "c", "c"]
    table = group_table(pred, label, groups)
    assert table == [{"group": "a", "n": 2, "accuracy": 1.0}, {"group": "b", "n": 2, "accuracy": 0.5},
                     {"group": "c", "n": 2, "accuracy": 1.0}]
    assert worst_group_accuracy(table) == 0.5
    cf = np.array([[0, 1], [0, 0], [1, 1], [1, 1], [2, 0], [0, 2]])
    same = np.array([[True, False], [True, False], [False, False], [False, True], [True, False], [False, True]])
    # compared pairs: (0:1 flip) (1:0 same) (2:1,1 same) (3:1 same) (4:0 flip) (5:0 flip) -> 3 of 7
    assert counterfactual_flip_rate(pred, cf, same) == pytest.approx(3 / 7)
    out = summarise(pred, label, groups, cf, same)
    assert out["average_accuracy"] == pytest.approx(5 / 6) and out["counterfactual_invariance"] == pytest.approx(4 / 7)


def test_timm_path_fails_clearly_without_timm():
    pytest.importorskip("torch")
    try:
        import timm  # noqa: F401
        pytest.skip("timm installed")
    except ImportError:
        with pytest.raises(ImportError, match="needs timm"):
            build_model("timm:resnet18")
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg")
