"""The six Spawrious benchmark splits (Lynch et al. 2023): O2O and M2M, each Easy/Medium/Hard.

A split is a set of environments. An environment is the location mechanism of the SCM for that environment: for each
breed, a distribution over the six backgrounds. Group counts follow the official loader (aengusl/spawrious,
`build_combination`): every breed has `per_env_total` images per training environment (3168 in the paper);
O2O puts `int(0.97 * total)` / `int(0.87 * total)` of them on the breed's own background and the rest on the shared
filler background; M2M puts all of them on one background of the breed's pair, the pair member swapping between the
two environments. Test environments put each breed on backgrounds seen only with other breeds.

Beside the six splits, the spurious-strength dial `dial_<rho in percent>` (issue 18; not in the paper, whose fixed
levels cannot show how a method degrades as the correlation grows): the four O2O-Hard training backgrounds, each
breed on its own with probability rho and on each of the other three with (1 - rho) / 3, in both training
environments; the test environment puts every breed on all four backgrounds (a group-balanced test set, as in
Waterbirds), so rho = 0.25 is no correlation and worst-group accuracy is over the mismatched groups.

Hand-written because the official package builds torchvision datasets straight from the folder tree; here the same
definition must drive a generator, a folder loader and a Great Expectations check.
"""

from __future__ import annotations

from dataclasses import dataclass

from latlab.config import BENCHMARK_SPLITS, dial_correlation

# Label order of the official loader (`class_list`): alphabetical.
CLASSES: tuple[str, ...] = ("bulldog", "corgi", "dachshund", "labrador")
# Order in which the paper and the official code list the per-breed backgrounds.
PAPER_BREED_ORDER: tuple[str, ...] = ("bulldog", "dachshund", "labrador", "corgi")
LOCATIONS: tuple[str, ...] = ("desert", "jungle", "dirt", "mountain", "snow", "beach")
PAPER_PER_ENV_TOTAL = 3168
O2O_CORRELATIONS: tuple[float, float] = (0.97, 0.87)

# (training backgrounds in PAPER_BREED_ORDER, test backgrounds in PAPER_BREED_ORDER, filler)
_O2O = {
    "easy": (("desert", "jungle", "dirt", "snow"), ("dirt", "snow", "desert", "jungle"), "beach"),
    "medium": (("mountain", "beach", "dirt", "jungle"), ("jungle", "dirt", "beach", "snow"), "desert"),
    "hard": (("jungle", "mountain", "snow", "desert"), ("mountain", "snow", "desert", "jungle"), "beach"),
}
# (P, Q): {bulldog, dachshund} train on P, {labrador, corgi} on Q; swapped at test.
_M2M = {
    "easy": (("desert", "mountain"), ("dirt", "jungle")),
    "medium": (("beach", "snow"), ("mountain", "desert")),
    "hard": (("dirt", "jungle"), ("snow", "beach")),
}
SPLIT_NAMES: tuple[str, ...] = BENCHMARK_SPLITS  # o2o_easy ... m2m_hard (config validates params.yaml against it)
DIAL_BACKGROUNDS: tuple[str, ...] = _O2O["hard"][0]  # in PAPER_BREED_ORDER: the dial's own background per breed


@dataclass(frozen=True)
class Environment:
    """Location mechanism of one environment: breed -> ((location, probability), ...), probabilities sum to 1."""

    name: str
    part: str  # "train" or "test"
    index: int
    locations: dict[str, tuple[tuple[str, float], ...]]
    # official layout folder(s) the images of this environment come from, per breed
    folders: tuple[str, ...]


@dataclass(frozen=True)
class Group:
    """One cell of a split: `count` images of `breed` on `location` in environment `env`."""

    part: str
    env: str
    breed: str
    location: str
    count: int
    folders: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.part}/{self.env}/{self.breed}/{self.location}"


@dataclass(frozen=True)
class SplitDefinition:
    name: str
    family: str  # "o2o" or "m2m"
    level: str
    environments: tuple[Environment, ...]

    def environment(self, name: str) -> Environment:
        return next(env for env in self.environments if env.name == name)

    def train_environments(self) -> tuple[Environment, ...]:
        return tuple(env for env in self.environments if env.part == "train")

    def groups(self, per_env_total: int = PAPER_PER_ENV_TOTAL, test_per_group: int = 0) -> list[Group]:
        """Exact per-group counts. Training counts follow the official `int(p * total)`; test groups get
        `test_per_group` images each (the official loader takes every file; 0 here means "all", for the loader)."""
        groups = []
        for env in self.environments:
            for breed in CLASSES:
                options = env.locations[breed]
                if env.part == "train":
                    counts = _train_counts(options, per_env_total)
                else:
                    counts = [test_per_group] * len(options)
                groups.extend(Group(env.part, env.name, breed, location, count, env.folders)
                              for (location, _), count in zip(options, counts))
        return groups


def _train_counts(options: tuple[tuple[str, float], ...], total: int) -> list[int]:
    # The official loader floors the spurious share and gives the remainder to the filler background.
    # (+1e-6: a share stored rounded, e.g. (1 - 0.99) / 3 = 0.0033333333, must not floor 300 x it to 0)
    head = [int(p * total + 1e-6) for _, p in options[:-1]]
    return [*head, total - sum(head)]


def _o2o(level: str) -> SplitDefinition:
    train, test, filler = _O2O[level]
    envs = []
    for index, p in enumerate(O2O_CORRELATIONS):
        mapping = {breed: ((location, p), (filler, round(1 - p, 10)))
                   for breed, location in zip(PAPER_BREED_ORDER, train)}
        envs.append(Environment(f"train_{index}", "train", index, mapping, (str(index),)))
    test_map = {breed: ((location, 1.0),) for breed, location in zip(PAPER_BREED_ORDER, test)}
    # The official O2O test set reads the test background from both folders.
    envs.append(Environment("test", "test", len(envs), test_map, ("0", "1")))
    return SplitDefinition(f"o2o_{level}", "o2o", level, tuple(envs))


def _m2m(level: str) -> SplitDefinition:
    p, q = _M2M[level]
    pairs = {"bulldog": p, "dachshund": p[::-1], "labrador": q, "corgi": q[::-1]}
    envs = [Environment(f"train_{index}", "train", index,
                        {breed: ((pair[index], 1.0),) for breed, pair in pairs.items()}, ("0",))
            for index in range(2)]
    swapped = {"bulldog": q, "dachshund": q, "labrador": p[::-1], "corgi": p}
    test_map = {breed: tuple((location, 0.5) for location in pair) for breed, pair in swapped.items()}
    envs.append(Environment("test", "test", 2, test_map, ("0",)))
    return SplitDefinition(f"m2m_{level}", "m2m", level, tuple(envs))


def _dial(rho: float) -> SplitDefinition:
    envs = []
    for index in range(2):
        mapping = {}
        for breed, own in zip(PAPER_BREED_ORDER, DIAL_BACKGROUNDS):
            others = tuple((location, round((1 - rho) / 3, 10)) for location in DIAL_BACKGROUNDS if location != own)
            # own background last: `_train_counts` gives it the remainder, so the minority counts are exact floors
            mapping[breed] = (*others, (own, rho))
        envs.append(Environment(f"train_{index}", "train", index, mapping, (str(index),)))
    test_map = {breed: tuple((location, 0.25) for location in DIAL_BACKGROUNDS) for breed in PAPER_BREED_ORDER}
    envs.append(Environment("test", "test", 2, test_map, ("0", "1")))
    return SplitDefinition(f"dial_{round(rho * 100)}", "dial", f"rho={rho:g}", tuple(envs))


def split_stream(name: str) -> int:
    """A fixed integer per split name for its random stream (the six splits 0-5, dial_<p> 100 + p), so adding a split
    to a grid does not change the others' images."""
    rho = dial_correlation(name)
    return SPLIT_NAMES.index(name) if rho is None else 100 + round(rho * 100)


def split_definition(name: str) -> SplitDefinition:
    """The six Spawrious splits by name (`o2o_easy` ... `m2m_hard`), or a dial split `dial_<rho in percent>`."""
    rho = dial_correlation(name)
    if rho is not None:
        return _dial(rho)
    if name not in SPLIT_NAMES:
        raise ValueError(f"unknown Spawrious split {name!r}; expected one of {', '.join(SPLIT_NAMES)} "
                         "or dial_<rho in percent, 1-99>")
    family, _, level = name.partition("_")
    return _o2o(level) if family == "o2o" else _m2m(level)
