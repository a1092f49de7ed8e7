"""Split construction reproduces the Spawrious paper's groups, per-group counts and proportions."""

import numpy as np
import pytest

from latlab.vision.benchmark import generate_split
from latlab.vision.scm import SpawriousSCM, location_mechanism
from latlab.config import RenderConfig, SpawriousDataConfig
from latlab.vision.splits import CLASSES, LOCATIONS, PAPER_PER_ENV_TOTAL, SPLIT_NAMES, split_definition
from tests.settings import make

# The O2O split definitions of the Spawrious paper (Lynch, Dovonon, Kaddour & Silva, "Spawrious: A Benchmark for
# Fine Control of Spurious Correlation Biases", 2023; docs/spawrious.md), breeds in the paper's order bulldog,
# dachshund, labrador, corgi
O2O = {
    "o2o_easy": (["desert", "jungle", "dirt", "snow"], ["dirt", "snow", "desert", "jungle"], "beach"),
    "o2o_medium": (["mountain", "beach", "dirt", "jungle"], ["jungle", "dirt", "beach", "snow"], "desert"),
    "o2o_hard": (["jungle", "mountain", "snow", "desert"], ["mountain", "snow", "desert", "jungle"], "beach"),
}
M2M = {"m2m_easy": ({"desert", "mountain"}, {"dirt", "jungle"}),
       "m2m_medium": ({"beach", "snow"}, {"mountain", "desert"}),
       "m2m_hard": ({"dirt", "jungle"}, {"snow", "beach"})}
ORDER = ["bulldog", "dachshund", "labrador", "corgi"]


def _counts(groups):
    return {(g.part, g.env, g.breed, g.location): g.count for g in groups}


def test_six_splits():
    assert set(SPLIT_NAMES) == {*O2O, *M2M}
    with pytest.raises(ValueError, match="unknown Spawrious split"):
        split_definition("o2o_impossible")


@pytest.mark.parametrize("name", sorted(O2O))
def test_o2o_paper_counts_and_backgrounds(name):
    train, test, filler = O2O[name]
    counts = _counts(split_definition(name).groups(PAPER_PER_ENV_TOTAL, test_per_group=7))
    for breed, own, test_bg in zip(ORDER, train, test):
        # official loader: int(0.97 * 3168) = 3072 and int(0.87 * 3168) = 2756 on the breed's own background
        assert counts["train", "train_0", breed, own] == 3072
        assert counts["train", "train_0", breed, filler] == 96
        assert counts["train", "train_1", breed, own] == 2756
        assert counts["train", "train_1", breed, filler] == 412
        assert counts["train", "train_0", breed, own] / PAPER_PER_ENV_TOTAL == pytest.approx(0.97, abs=1e-3)
        assert counts["train", "train_1", breed, own] / PAPER_PER_ENV_TOTAL == pytest.approx(0.87, abs=1e-3)
        assert counts["test", "test", breed, test_bg] == 7
        # never the breed's own background nor the filler (o2o_medium's corgi test background, snow, is not a
        # training background at all)
        assert test_bg not in (own, filler)
    # 4 breeds x 2 envs x (own, filler) + 4 test groups, nothing else
    assert len(counts) == 20


@pytest.mark.parametrize("name", sorted(M2M))
def test_m2m_pairs_swap_at_test(name):
    p, q = M2M[name]
    counts = _counts(split_definition(name).groups(PAPER_PER_ENV_TOTAL, test_per_group=5))
    for breed in CLASSES:
        train_pair, test_pair = (p, q) if breed in ("bulldog", "dachshund") else (q, p)
        per_env = [{loc for (part, env, b, loc), n in counts.items() if part == "train" and env == e and b == breed}
                   for e in ("train_0", "train_1")]
        assert all(len(locs) == 1 for locs in per_env)
        assert per_env[0] | per_env[1] == train_pair  # one pair member per environment
        assert all(counts["train", e, breed, next(iter(locs))] == PAPER_PER_ENV_TOTAL
                   for e, locs in zip(("train_0", "train_1"), per_env))
        assert {loc for (part, _, b, loc) in counts if part == "test" and b == breed} == test_pair
    # the two breeds sharing a pair sit on different members within an environment
    for e in ("train_0", "train_1"):
        locs = {b: loc for (part, env, b, loc) in counts if part == "train" and env == e}
        assert locs["bulldog"] != locs["dachshund"] and locs["labrador"] != locs["corgi"]


@pytest.mark.parametrize("name", ["o2o_hard", "m2m_medium"])
def test_generated_manifest_matches_definition(name):
    cfg = make(SpawriousDataConfig, per_env_total=100, test_per_group=4, render=make(RenderConfig, image_size=8))
    data = generate_split(name, cfg, counterfactual=False)
    definition = split_definition(name)
    observed = data.manifest.groupby(["part", "env", "breed", "location"]).size().to_dict()
    assert observed == {k: v for k, v in _counts(definition.groups(100, 4)).items() if v}
    if name.startswith("o2o"):
        assert sorted(set(observed.values())) == [3, 4, 13, 87, 97]  # 97/3 and 87/13 per breed, 4 per test group
    envs = {env.name: env for env in definition.environments}
    # every unit's background is what the SCM's location mechanism gives for its noise
    assert all(location_mechanism(envs[e], b, u) == loc for e, b, u, loc in
               data.manifest[["env", "breed", "u_loc", "location"]].itertuples(index=False))
    assert data.images.shape == (len(data.manifest), 8, 8, 3)


def test_observational_sampling_follows_the_correlation():
    definition = split_definition("o2o_easy")
    units = SpawriousSCM().observe(definition.environment("train_1"), 20000, np.random.default_rng(0))
    own = dict(zip(ORDER, O2O["o2o_easy"][0]))
    share = np.mean([loc == own[b] for b, loc in zip(units["breed"], units["location"])])
    assert share == pytest.approx(0.87, abs=0.01)
    assert set(units["location"]) == set(own.values()) | {"beach"}
    assert set(units["location"]) < set(LOCATIONS)


DIAL_OWN = dict(zip(ORDER, O2O["o2o_hard"][0]))  # the dial uses the O2O-Hard training backgrounds


@pytest.mark.parametrize("name, rho, minority", [("dial_97", 0.97, 3), ("dial_99", 0.99, 1), ("dial_50", 0.5, 50),
                                                 ("dial_25", 0.25, 75)])
def test_dial_puts_rho_of_each_breed_on_its_own_background(name, rho, minority):
    counts = _counts(split_definition(name).groups(300, test_per_group=6))
    for env in ("train_0", "train_1"):
        for breed, own in DIAL_OWN.items():
            row = {loc: n for (part, e, b, loc), n in counts.items() if part == "train" and e == env and b == breed}
            # (1 - rho) / 3 of 300 on each other breed's background; a rounded share must not floor 1 to 0
            assert row == {loc: (300 - 3 * minority if loc == own else minority) for loc in DIAL_OWN.values()}
            assert row[own] / 300 == pytest.approx(rho, abs=0.004)
    test = {(b, loc): n for (part, _, b, loc), n in counts.items() if part == "test"}
    assert test == {(b, loc): 6 for b in CLASSES for loc in DIAL_OWN.values()}  # every breed on every background


def test_dial_names_are_checked_and_streams_are_distinct():
    from latlab.vision.splits import dial_correlation, split_stream

    assert dial_correlation("dial_97") == 0.97 and dial_correlation("o2o_easy") is None
    for bad in ("dial_0", "dial_100", "dial_9.5"):
        with pytest.raises(ValueError, match="unknown Spawrious split"):
            split_definition(bad)
    names = [*SPLIT_NAMES, *(f"dial_{p}" for p in range(1, 100))]
    assert len({split_stream(n) for n in names}) == len(names)
    assert [split_stream(n) for n in SPLIT_NAMES] == list(range(6))  # the six splits' images are unchanged


def test_a_bad_dial_in_params_names_the_key(tmp_path):
    import yaml

    from latlab.config import ConfigError, load_params

    raw = yaml.safe_load(open("params.yaml"))
    raw["spawrious"]["splits"] = ["o2o_easy", "dial_100"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"spawrious\.splits.*dial_100.*dial_<rho in percent"):
        load_params(tmp_path / "params.yaml")


def test_dial_manifest_follows_its_scm_and_passes_the_manifest_check():
    from latlab.vision.validation import validate_manifest

    cfg = make(SpawriousDataConfig, per_env_total=60, test_per_group=2, render=make(RenderConfig, image_size=8))
    data = generate_split("dial_90", cfg)
    definition = split_definition("dial_90")
    envs = {env.name: env for env in definition.environments}
    assert all(location_mechanism(envs[e], b, u) == loc for e, b, u, loc in
               data.manifest[["env", "breed", "u_loc", "location"]].itertuples(index=False))
    assert validate_manifest(data.manifest, definition, 60, 2)["success"]
    train = data.manifest[data.manifest["part"] == "train"]
    assert np.mean([loc == DIAL_OWN[b] for b, loc in zip(train["breed"], train["location"])]) == pytest.approx(0.9)
    assert data.counterfactual.shape[:2] == (32, len(LOCATIONS))  # 16 test groups x 2, each on all six backgrounds
