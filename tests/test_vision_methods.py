"""Training methods and metrics: every method trains; GroupDRO vs ERM on a deliberately spurious tiny split; the
held-out split, DFR's refit head and the model-selection rules."""

import numpy as np
import pytest
import torch

from latlab.vision.benchmark import evaluate, generate_split, training_data
from latlab.vision.methods import dfr_head, features, holdout_split, train_method
from latlab.vision.metrics import (counterfactual_flip_rate, group_table, select_checkpoints, summarise,
                                   worst_class_accuracy, worst_group_accuracy)
from latlab.vision.models import build_model
from latlab.config import MethodHparams, RenderConfig, SpawriousDataConfig, SpawriousTrainConfig
from tests.settings import make

METHODS = ["erm", "groupdro", "irm", "vrex", "coral", "jtt", "mixup", "dfr"]


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
    train, heldout = holdout_split(train, 0.3, 0)
    model = train_method(method, train, make(SpawriousTrainConfig, steps=4, width=4, batch_size=16, log_every=1), hp,
                         len(vocab), log=lambda metrics, step: logged.append((step, metrics)), heldout=heldout)
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


def test_holdout_split_is_disjoint_complete_and_keeps_every_group_on_both_sides(tiny):
    _, train, _ = tiny
    kept, held = holdout_split(train, 0.2, 0)
    assert len(kept.y) + len(held.y) == len(train.y)
    rows = lambda d: {tuple(r) for r in d.x.flatten(1)[:, :64].tolist()}  # noqa: E731  (images are distinct)
    assert not rows(kept) & rows(held)
    counts = torch.bincount(train.group)
    assert torch.equal(torch.bincount(held.group, minlength=len(counts)), torch.clamp(
        torch.round(0.2 * counts), min=1).long())  # the rare groups (3 images) keep one held-out image
    again, _ = holdout_split(train, 0.2, 0)
    assert torch.equal(again.x, kept.x)


def test_dfr_head_is_the_balanced_logistic_regression_folded_into_the_model(tiny):
    """One subsample: the refit model's logits equal scikit-learn's decision function on the standardised features,
    and the fit saw the same number of images from every group."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    _, train, vocab = tiny
    train, heldout = holdout_split(train, 0.5, 0)
    model = train_method("erm", train, make(SpawriousTrainConfig, steps=20, width=4, batch_size=16), make(MethodHparams),
                         len(vocab))
    hp = make(MethodHparams, dfr_subsamples=1, dfr_c=0.5)
    refit = dfr_head(model, heldout, hp, seed=3)
    feats, groups = features(model, heldout.x).numpy(), heldout.group.numpy()
    per_group = min(np.bincount(groups))
    rng = np.random.default_rng(3)
    idx = np.concatenate([rng.choice(np.flatnonzero(groups == g), per_group, replace=False) for g in np.unique(groups)])
    assert len(idx) == per_group * len(np.unique(groups))
    mean, std = feats[idx].mean(0), feats[idx].std(0) + 1e-8
    clf = OneVsRestClassifier(LogisticRegression(C=0.5, l1_ratio=1.0, solver="liblinear", random_state=0)).fit(
        (feats[idx] - mean) / std, heldout.y.numpy()[idx])
    with torch.no_grad():
        logits = refit(heldout.x).numpy()
    np.testing.assert_allclose(logits, clf.decision_function((feats - mean) / std), atol=2e-3)  # float32 fold
    # reproducible: liblinear shuffles its data, so an unseeded fit differs from run to run
    again = dfr_head(model, heldout, make(MethodHparams, dfr_subsamples=3, dfr_c=0.5), seed=3)
    assert torch.equal(again.head.weight, dfr_head(model, heldout, make(MethodHparams, dfr_subsamples=3, dfr_c=0.5),
                                                   seed=3).head.weight)
    # the backbone is untouched, the original model too
    assert all(torch.equal(a, b) for a, b in zip(refit.body.parameters(), model.body.parameters()))
    assert not torch.equal(refit.head.weight, model.head.weight)


def test_dfr_without_a_heldout_set_is_a_clear_error(tiny):
    _, train, vocab = tiny
    with pytest.raises(ValueError, match="holdout_fraction"):
        train_method("dfr", train, make(SpawriousTrainConfig, steps=1), make(MethodHparams), len(vocab))


@pytest.mark.parametrize("method", ["erm", "jtt", "dfr"])
def test_checkpoints_come_every_n_steps_and_at_the_end(method, tiny):
    _, train, vocab = tiny
    train, heldout = holdout_split(train, 0.3, 0)
    seen = []
    cfg = make(SpawriousTrainConfig, steps=7, width=4, batch_size=16)
    model = train_method(method, train, cfg, make(MethodHparams, jtt_identification_steps=2), len(vocab),
                         heldout=heldout, checkpoint=lambda step, m: seen.append((step, m.training)),
                         checkpoint_every=3)
    assert seen == [(3, False), (6, False), (7, False)]  # in eval mode; JTT's identification run is not selected from
    assert not model.training


def test_dfr_refits_once_per_checkpoint_and_returns_the_last_refit(tiny, monkeypatch):
    import latlab.vision.methods as methods

    _, train, vocab = tiny
    train, heldout = holdout_split(train, 0.3, 0)
    refits = []
    real = methods.dfr_head
    monkeypatch.setattr(methods, "dfr_head", lambda *a, **k: refits.append(real(*a, **k)) or refits[-1])
    seen = []
    cfg = make(SpawriousTrainConfig, steps=7, width=4, batch_size=16)
    model = train_method("dfr", train, cfg, make(MethodHparams, dfr_subsamples=2), len(vocab), heldout=heldout,
                         checkpoint=lambda step, m: seen.append(m), checkpoint_every=3)
    assert len(refits) == 3 and model is refits[-1] is seen[-1]  # steps 3, 6, 7: the end model is not refit twice
    refits.clear()
    assert train_method("dfr", train, cfg, make(MethodHparams, dfr_subsamples=2), len(vocab), heldout=heldout) \
        is refits[-1] and len(refits) == 1


def test_selection_rules_on_a_hand_example():
    rows = [{"step": 1, "val": {"average_accuracy": 0.9, "worst_class_accuracy": 0.5}, "test": {"worst_group_accuracy": 0.1}},
            {"step": 2, "val": {"average_accuracy": 0.8, "worst_class_accuracy": 0.7}, "test": {"worst_group_accuracy": 0.2}},
            {"step": 3, "val": {"average_accuracy": 0.7, "worst_class_accuracy": 0.7}, "test": {"worst_group_accuracy": 0.6}}]
    picked = {rule: row["step"] for rule, row in select_checkpoints(rows).items()}
    assert picked == {"average_val": 1, "worst_class_val": 3, "oracle_worst_group": 3}  # a tie goes to the later one
    assert worst_class_accuracy(np.array([0, 0, 1, 1, 2]), np.array([0, 0, 1, 0, 2])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no checkpoints"):
        select_checkpoints([])


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


def test_mixup_mixes_across_environments_as_domainbed():
    """DomainBed's Mixup pairs each environment's examples with another environment's: with environment 0 all zeros
    and environment 1 all ones, every input the model sees is a strict mixture (a pooled-batch Mixup also pairs
    examples of one environment, which gives exact 0s and 1s)."""
    from latlab.vision.methods import Batch, LossState, mixup_loss

    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(1, 4)

        def forward(self, x):
            seen.append(x.detach())
            return self.linear(x.mean(dim=(1, 2, 3)).unsqueeze(1))

    torch.manual_seed(0)
    env = torch.arange(64) % 2
    batch = Batch(x=env.float().view(64, 1, 1, 1).expand(64, 3, 2, 2).clone(), y=torch.arange(64) % 4, env=env,
                  group=env)
    hp = make(MethodHparams, mixup_alpha=0.2)
    for step in range(20):
        loss = mixup_loss(Recorder(), batch, LossState(), step, hp)
        assert torch.isfinite(loss)
    values = torch.cat([x.flatten() for x in seen])
    assert len(seen) == 40  # one forward per environment pair
    assert ((values > 0) & (values < 1)).all()
    # each pair uses one lam for all its examples: a forward's inputs are one value
    assert all(torch.unique(x).numel() == 1 for x in seen)


def test_mixup_loss_is_domainbed_mixup():
    """`mixup_loss` gives DomainBed's `Mixup.update` objective (random_pairs_of_minibatches: environments in a random
    cycle, each paired with the next, truncated to the shorter; one lam ~ Beta(alpha, alpha) per pair; lam-weighted
    cross-entropies summed over the pairs and divided by the number of environments), here transliterated with the
    same random stream, on three environments of unequal size and in interleaved batch order (issue 18: the Mixup
    collapse on the miniature is not an implementation departure)."""
    import torch.nn.functional as F

    from latlab.vision.methods import Batch, LossState, mixup_loss

    gen = torch.Generator().manual_seed(3)
    env = torch.tensor([0, 1, 2, 0, 1, 0, 2, 0, 1, 0, 2, 1, 0, 1])  # 6, 5, 3 examples
    batch = Batch(x=torch.randn(len(env), 3, 4, 4, generator=gen), y=torch.randint(0, 4, (len(env),), generator=gen),
                  env=env, group=env)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 4))
    hp = make(MethodHparams, mixup_alpha=0.7)

    def domainbed(minibatches):
        perm = torch.randperm(len(minibatches)).tolist()
        objective = 0.0
        for i in range(len(minibatches)):
            j = i + 1 if i < len(minibatches) - 1 else 0
            (xi, yi), (xj, yj) = minibatches[perm[i]], minibatches[perm[j]]
            n = min(len(xi), len(xj))
            xi, yi, xj, yj = xi[:n], yi[:n], xj[:n], yj[:n]
            lam = float(torch.distributions.Beta(0.7, 0.7).sample())
            predictions = model(lam * xi + (1 - lam) * xj)
            objective += lam * F.cross_entropy(predictions, yi) + (1 - lam) * F.cross_entropy(predictions, yj)
        return objective / len(minibatches)

    minibatches = [(batch.x[env == e], batch.y[env == e]) for e in range(3)]
    for seed in range(5):
        torch.manual_seed(seed)
        ours = mixup_loss(model, batch, LossState(), 0, hp)
        torch.manual_seed(seed)
        reference = domainbed(minibatches)
        assert torch.allclose(ours, reference, atol=1e-6)
