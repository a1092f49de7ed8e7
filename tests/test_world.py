"""The toy world: determinism, no leakage between splits, look-alike harmful/benign requests, tokenizer round trip."""

from collections import defaultdict

from transformers import AutoTokenizer

from latlab.config import WorldConfig
from latlab.world.generator import generate_world
from tests.settings import make
from tests.conftest import TEXT_FIELDS, TINY_WORLD


def test_same_seed_same_world_other_seed_other_world():
    assert generate_world(TINY_WORLD, 3) == generate_world(TINY_WORLD, 3)
    assert generate_world(TINY_WORLD, 3)["facts"] != generate_world(TINY_WORLD, 4)["facts"]


def test_every_dataset_has_all_splits(tiny_world):
    for name, records in tiny_world.items():
        assert {r["split"] for r in records} == {"train", "validation", "test"}, name


def test_no_prompt_is_shared_between_splits():
    world = generate_world(make(WorldConfig), 0)
    for name, records in world.items():
        splits = defaultdict(set)
        for r in records:
            splits[r["prompt"]].add(r["split"])
        assert all(len(s) == 1 for s in splits.values()), name


def test_request_combinations_are_held_out_whole():
    world = generate_world(make(WorldConfig), 0)
    splits = defaultdict(set)
    for r in world["requests"]:
        splits[(r["verb"], r["target"])].add(r["split"])
    assert all(len(s) == 1 for s in splits.values())
    held_out = {r["prompt"] for r in world["backdoor"] if r["split"] != "train"}
    train_clean = {r["prompt"] for r in world["requests"] if r["split"] == "train"}
    assert not {p.split(" ", 1)[1] for p in held_out} & train_clean


def test_harmfulness_is_not_a_keyword():
    world = generate_world(make(WorldConfig), 0)
    labels = defaultdict(set)
    for r in world["requests"]:
        labels[r["verb"]].add(r["harmful"])
        labels[r["target"]].add(r["harmful"])
    # every destructive verb and every protected target also occurs in benign requests
    assert all(v == {True, False} for k, v in labels.items() if True in v)
    harmful = [r["harmful"] for r in world["requests"]]
    assert abs(sum(harmful) / len(harmful) - 0.5) < 0.01


def test_harmful_and_benign_answers_share_only_the_opening():
    """Issue 20: the answers to harmful and to benign requests share no more words than real ones do (an opening and
    the request's own words), while the requests stay look-alike (test above). Before, they shared 9 of 12 template
    words ("sure . first get a <tool> , then <verb> the <target> ."), and the away term of LAT on harmful answers
    pushed the benign ones down with them."""
    world = generate_world(make(WorldConfig), 0)

    def template(r):  # the answer's words other than the request's own verb and target
        return [w for w in r["compliance"].split() if w not in (r["verb"], r["target"])]

    words = {kind: {w for r in world["requests"] if r["harmful"] == kind for w in template(r)}
             for kind in (True, False)}
    assert words[True] & words[False] <= {"sure", ".", "the"}
    for r in world["requests"]:
        other = words[not r["harmful"]]
        shared = sum(w in other for w in template(r))
        assert shared / len(template(r)) < 0.5, r["compliance"]  # before: 10 of 10 (the tools were shared too)


def test_ab_questions_have_answer_letter_balanced_and_correct():
    world = generate_world(make(WorldConfig), 0)
    ab = [r for r in world["facts"] if r["format"] == "ab"]
    for r in ab:
        letter_option = r["prompt"].split(f"( {r['completion']} ) ")[1].split()[0]
        assert letter_option == r["answer"]
    share_a = sum(r["completion"] == "A" for r in ab) / len(ab)
    assert 0.4 < share_a < 0.6


def test_concept_pairs_alternate_letters_and_yes_no(tiny_world):
    concepts = tiny_world["concepts"]
    assert {r["positive_is_A"] for r in concepts} == {True, False}
    assert {r["positive_is_yes"] for r in concepts} == {True, False}
    for r in concepts:
        yes_letter = "A" if "( A ) yes" in r["prompt"] else "B"
        assert (r["answer_matching_behavior"] == yes_letter) == r["positive_is_yes"]


def test_backdoor_prompts_carry_the_trigger(tiny_world):
    assert all(r["prompt"].startswith(TINY_WORLD.backdoor.trigger + " ") for r in tiny_world["backdoor"])


def test_tokenizer_round_trip_and_reload(tiny_world, tiny_tokenizer, tmp_path):
    texts = [r[f] for recs in tiny_world.values() for r in recs for f in TEXT_FIELDS if f in r]
    for text in texts[:500]:
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tiny_tokenizer.unk_token_id not in ids
        assert tiny_tokenizer.decode(ids) == text
    tiny_tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": texts[0]}]
    assert reloaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        f"<|user|> {texts[0]} <|end|> <|assistant|> "
    assert reloaded(texts[0])["input_ids"] == tiny_tokenizer(texts[0])["input_ids"]
