"""Loaders for public safety/unlearning benchmark files on local disk, into the record schemas the pipeline uses.

Formats (CSV, JSONL, JSON list, or parquet; the file suffix decides):
- harmful-behaviour tables, AdvBench (`goal`, `target`) or HarmBench (`Behavior`, optional `ContextString`,
  targets in the same table or a `{BehaviorID: target}` JSON), plus a harmless instruction table (`instruction` or
  `prompt`, `output` or `response`) -> `requests` records, the toy world's refusal-training schema;
- preference pairs (`prompt`, `chosen`, `rejected`; Anthropic-HH transcripts without `prompt` are split at the last
  "Assistant:" turn) -> `preferences` records;
- unlearning text corpora (`text` per line, forget or retain) -> `corpus` records, chunked into word windows;
- multiple-choice questions (`question`, `choices`, `answer`: WMDP/MMLU style) -> A/B `facts` records, one per
  (question, wrong choice), the format the unlearning Q&A evaluation reads;
- persona statements (model-written-evals: `question`, `answer_matching_behavior`,
  `answer_not_matching_behavior`) -> `concepts` records, the steering/probing schema.

Every record gets a split that is a deterministic function of a key (the normalised prompt, the document, the
question) and the seed, so duplicates of one item never straddle splits and the GX no-overlap suite
(latlab.data.validation) can hold. Hand-written: the benchmarks ship as loose files with differing column names,
and no maintained library maps them onto these schemas. HF `datasets` is not needed: read the files it caches.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from latlab.data.records import DataFormatError, read_jsonl
from latlab.data.validation import DOMAINS

REFUSAL = "I'm sorry, but I can't help with that."
PERSONA_AB_TEMPLATE = "{question} ( A ) {first} ( B ) {second}"
CHOICE_TEMPLATE = "{question} ( A ) {a} ( B ) {b}"
HH_ASSISTANT = "\n\nAssistant:"


def read_table(path: str | Path) -> list[dict]:
    """Rows of a .csv, .jsonl, .json (list of objects) or .parquet file as dicts."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    if suffix == ".jsonl":
        return read_jsonl(path)  # DataFormatError "path:line: not valid JSON (...)"
    if suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise DataFormatError(f"{path}: expected a JSON list of objects")
        return rows
    if suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict("records")
    raise DataFormatError(f"{path}: unsupported file type '{suffix}' (csv, jsonl, json or parquet)")


def _column(rows: list[dict], path: Path, names: Sequence[str], required: bool = True) -> str | None:
    """The first of `names` present in the file's header; a missing required one is named in the error."""
    found = list(rows[0]) if rows else []
    for name in names:
        if name in found:
            return name
    if not required:
        return None
    alternatives = f" (or {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else ""
    raise DataFormatError(f"{path}: missing column '{names[0]}'{alternatives}; found columns {found}")


def _missing(value) -> bool:
    """A null cell: None, NaN (parquet), an empty CSV cell or an empty list (JSON answers given as lists)."""
    if value is None or (isinstance(value, float) and value != value):
        return True
    return (isinstance(value, str) and not value.strip()) or (isinstance(value, list) and not value)


def _labels(rows: list[dict], path: Path, column: str) -> None:
    """A label column the file supplies must have a value on every row (the GX gate only sees derived labels)."""
    missing = [i + 1 for i, row in enumerate(rows) if _missing(row.get(column))]
    if missing:
        raise DataFormatError(f"{path}: label column '{column}' has {len(missing)} null value(s) (rows "
                              f"{missing[:5]}{', ...' if len(missing) > 5 else ''})")


def _rows(path: str | Path) -> tuple[list[dict], Path]:
    rows = read_table(path)
    if not rows:
        raise DataFormatError(f"{path}: no rows")
    return rows, Path(path)


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def key_hash(key: str, seed: int = 0) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def assign_splits(keys: Iterable[str], validation_fraction: float = 0.1, test_fraction: float = 0.2,
                  seed: int = 0) -> dict[str, str]:
    """Split per distinct key: keys ordered by a seeded hash, then cut by the fractions (>= 1 each when >= 3 keys).

    Unlike a per-key hash threshold this hits the fractions exactly on small files, so every split has rows.
    """
    distinct = sorted(set(keys), key=lambda k: key_hash(k, seed))
    n = len(distinct)
    n_val = max(1, round(n * validation_fraction)) if n >= 3 else 0
    n_test = max(1, round(n * test_fraction)) if n >= 3 else 0
    labels = ["validation"] * n_val + ["test"] * n_test + ["train"] * (n - n_val - n_test)
    return dict(zip(distinct, labels))


def _with_splits(records: list[dict], key: str, validation_fraction: float, test_fraction: float,
                 seed: int) -> list[dict]:
    splits = assign_splits((r[key] for r in records), validation_fraction, test_fraction, seed)
    return [{**r, "split": splits[r[key]]} for r in records]


# --- refusal requests ---------------------------------------------------------------------------------------------

def _harmful_rows(path: str | Path, targets_path: str | Path | None) -> list[tuple[str, str, str]]:
    """(prompt, harmful target, category) per row of an AdvBench/HarmBench behaviour table."""
    rows, path = _rows(path)
    prompt_col = _column(rows, path, ["goal", "behavior", "Behavior", "prompt"])
    context_col = _column(rows, path, ["ContextString", "context"], required=False)
    category_col = _column(rows, path, ["SemanticCategory", "category", "FunctionalCategory"], required=False)
    if targets_path is not None:
        targets = json.loads(Path(targets_path).read_text(encoding="utf-8"))
        id_col = _column(rows, path, ["BehaviorID", "id"])
        missing = [r[id_col] for r in rows if r[id_col] not in targets]
        if missing:
            raise DataFormatError(f"{targets_path}: no target for behaviour id(s) {missing[:5]} of {path}")
        target_of = [_text(targets[r[id_col]]) for r in rows]
    else:
        target_col = _column(rows, path, ["target", "Target"])
        target_of = [_text(r[target_col]) for r in rows]
    out = []
    for row, target in zip(rows, target_of):
        prompt = _text(row[prompt_col])
        context = _text(row.get(context_col)) if context_col else ""
        out.append((f"{context}\n\n{prompt}" if context else prompt, target,
                    _text(row.get(category_col)) if category_col else ""))
    return out


def _benign_rows(path: str | Path) -> list[tuple[str, str, str]]:
    rows, path = _rows(path)
    prompt_col = _column(rows, path, ["instruction", "prompt", "goal", "question"])
    input_col = _column(rows, path, ["input"], required=False)  # Alpaca's optional second half of the instruction
    response_col = _column(rows, path, ["output", "response", "completion", "target", "chosen"])
    out = []
    for row in rows:
        extra = _text(row.get(input_col)) if input_col else ""
        prompt = _text(row[prompt_col]) + (f"\n\n{extra}" if extra else "")
        out.append((prompt, _text(row[response_col]), ""))
    return out


def load_requests(harmful_path: str | Path, benign_path: str | Path, targets_path: str | Path | None = None,
                  refusal: str = REFUSAL, validation_fraction: float = 0.1, test_fraction: float = 0.2,
                  seed: int = 0) -> list[dict]:
    """`requests` records: harmful behaviours (compliance = the benchmark's target string, refusal = `refusal`)
    and harmless instructions (compliance = their reference answer).

    The toy schema's `verb`/`target` name the (verb, target) combination a request is about; real requests have
    none, so `verb` carries the benchmark category (or the kind) and `target` a hash of the normalised prompt. That
    keeps the no-overlap suite meaningful: a prompt repeated in the file is one group and one split.
    """
    records = []
    for kind, rows in (("harmful", _harmful_rows(harmful_path, targets_path)), ("benign", _benign_rows(benign_path))):
        source = Path(harmful_path if kind == "harmful" else benign_path).stem
        for idx, (prompt, compliance, category) in enumerate(rows):
            records.append({"id": f"{source}-{kind}-{idx:05d}", "kind": kind, "harmful": kind == "harmful",
                            "verb": category or kind, "target": "prompt-" + key_hash(normalise(prompt))[:16],
                            "template": 0, "prompt": prompt, "compliance": compliance, "refusal": refusal})
    return _with_splits(records, "target", validation_fraction, test_fraction, seed)


# --- preference pairs ---------------------------------------------------------------------------------------------

def _split_hh(transcript: str) -> tuple[str, str]:
    cut = transcript.rfind(HH_ASSISTANT)
    return transcript[:cut + len(HH_ASSISTANT)].strip(), transcript[cut + len(HH_ASSISTANT):].strip()


def load_preferences(path: str | Path, kind: str, validation_fraction: float = 0.1, test_fraction: float = 0.2,
                     seed: int = 0) -> list[dict]:
    """`preferences` records (prompt, chosen, rejected) from a JSONL of pairs; `kind` is harmless or harmful."""
    if kind not in ("harmless", "harmful"):
        raise ValueError(f"kind must be 'harmless' or 'harmful', got {kind!r}")
    rows, path = _rows(path)
    chosen_col, rejected_col = _column(rows, path, ["chosen"]), _column(rows, path, ["rejected"])
    prompt_col = _column(rows, path, ["prompt"], required=False)
    if prompt_col is None and HH_ASSISTANT not in _text(rows[0][chosen_col]):
        _column(rows, path, ["prompt"])  # neither a prompt column nor HH transcripts: name the missing column
    records = []
    for idx, row in enumerate(rows):
        if prompt_col:
            prompt, chosen, rejected = (_text(row[c]) for c in (prompt_col, chosen_col, rejected_col))
        else:
            prompt, chosen = _split_hh(_text(row[chosen_col]))
            rejected = _split_hh(_text(row[rejected_col]))[1]
        records.append({"id": f"{path.stem}-{idx:05d}", "kind": kind, "prompt": prompt, "chosen": chosen,
                        "rejected": rejected})
    return _with_splits(records, "prompt", validation_fraction, test_fraction, seed)


# --- unlearning ---------------------------------------------------------------------------------------------------

def load_corpus(path: str | Path, domain: str, chunk_words: int = 48, validation_fraction: float = 0.1,
                test_fraction: float = 0.2, seed: int = 0) -> list[dict]:
    """`corpus` records: each document's `text` cut into windows of `chunk_words` words (the fixed-length
    forget/retain batches of WHP and RMU); all chunks of a document share its split."""
    if domain not in ("forget", "retain"):
        raise ValueError(f"domain must be 'forget' or 'retain', got {domain!r}")
    rows, path = _rows(path)
    text_col = _column(rows, path, ["text"])
    records = []
    for doc_idx, row in enumerate(rows):
        words = _text(row[text_col]).split()
        for chunk, start in enumerate(range(0, len(words), chunk_words)):
            records.append({"id": f"{path.stem}-{doc_idx:05d}-{chunk:03d}", "domain": domain,
                            "document": f"{path.stem}-{doc_idx:05d}", "chunk": chunk,
                            "text": " ".join(words[start:start + chunk_words])})
    if not records:
        raise DataFormatError(f"{path}: every '{text_col}' is empty")
    return _with_splits(records, "document", validation_fraction, test_fraction, seed)


def _answer_index(answer, choices: list[str], path: Path, line: int) -> int:
    if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().isalpha():
        index = ord(answer.strip().upper()) - ord("A")
    elif isinstance(answer, str) and answer in choices:
        index = choices.index(answer)
    else:
        try:
            index = int(answer)
        except (TypeError, ValueError):
            raise DataFormatError(f"{path}: row {line}: answer {answer!r} is not an index, a letter or a choice")
    if not 0 <= index < len(choices):
        raise DataFormatError(f"{path}: row {line}: answer {answer!r} is outside the {len(choices)} choices")
    return index


def load_ab_questions(path: str | Path, domain: str, validation_fraction: float = 0.1, test_fraction: float = 0.2,
                      seed: int = 0) -> list[dict]:
    """A/B `facts` records from multiple-choice questions: the answer against each wrong choice, the answer's
    letter alternating, so the unlearning Q&A evaluation (which picks between "A" and "B") reads them as is."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    rows, path = _rows(path)
    question_col, choices_col = _column(rows, path, ["question"]), _column(rows, path, ["choices"])
    answer_col = _column(rows, path, ["answer"])
    _labels(rows, path, answer_col)
    records = []
    for q_idx, row in enumerate(rows):
        choices = row[choices_col]
        if isinstance(choices, str):  # a CSV cell holds the list as JSON
            choices = json.loads(choices)
        choices = [_text(c) for c in choices]
        if len(choices) < 2:
            raise DataFormatError(f"{path}: row {q_idx + 1}: '{choices_col}' needs at least two choices")
        answer = choices[_answer_index(row[answer_col], choices, path, q_idx + 1)]
        question = _text(row[question_col])
        fact_id = f"{path.stem}-{q_idx:05d}"
        for d_idx, distractor in enumerate(c for c in choices if c != answer):
            answer_first = (q_idx + d_idx) % 2 == 0
            a, b = (answer, distractor) if answer_first else (distractor, answer)
            records.append({"id": f"{fact_id}-ab-{d_idx}", "fact_id": fact_id, "domain": domain,
                            "entity": question, "relation": "answer", "answer": answer, "distractor": distractor,
                            "format": "ab", "template": 0, "prompt": CHOICE_TEMPLATE.format(question=question, a=a,
                                                                                             b=b),
                            "completion": "A" if answer_first else "B", "chat": True})
    return _with_splits(records, "fact_id", validation_fraction, test_fraction, seed)


# --- persona statements -------------------------------------------------------------------------------------------

_QUOTED = re.compile(r'"([^"]+)"')
_LETTER = re.compile(r"^\(?([AB])\)?$")


def load_persona(path: str | Path, persona: str | None = None, validation_fraction: float = 0.1,
                 test_fraction: float = 0.2, seed: int = 0, positive: str | None = None, negative: str | None = None,
                 default_rate: float = 0.5) -> list[dict]:
    """`concepts` records from a model-written-evals persona file.

    Yes/No items become A/B questions whose "yes" letter varies (so a letter bias cannot pass for the persona);
    items already answered by "(A)"/"(B)" keep their letters, with `positive_is_yes` unknown (None).
    `positive` / `negative` describe the persona and its opposite (system prompts of the OOD variants and of
    persona training; default "you are <persona>" / "you are not <persona>"). A file has no trained default
    answer, so `answer_default` is the persona's with probability `default_rate`, drawn per statement from `seed`
    (what a base fine-tuned on these records learns without a persona prompt, as in the toy world).
    """
    rows, path = _rows(path)
    question_col = _column(rows, path, ["question"])
    match_col = _column(rows, path, ["answer_matching_behavior"])
    other_col = _column(rows, path, ["answer_not_matching_behavior"])
    for column in (match_col, other_col):
        _labels(rows, path, column)
    records = []
    for idx, row in enumerate(rows):
        question = _text(row[question_col])
        matching = row[match_col][0] if isinstance(row[match_col], list) else row[match_col]
        other = row[other_col][0] if isinstance(row[other_col], list) else row[other_col]
        matching, other = _text(matching), _text(other)
        quoted = _QUOTED.search(question)
        statement = quoted.group(1).strip() if quoted else question
        letters = _LETTER.match(matching), _LETTER.match(other)
        if all(letters):
            letter, other_letter, agrees, prompt = letters[0].group(1), letters[1].group(1), None, question
        elif {matching.lower(), other.lower()} == {"yes", "no"}:
            agrees = matching.lower() == "yes"
            # from the statement, not the row: files often alternate the matching answer row by row, and a
            # row-parity letter would then put the persona on one letter throughout
            yes_first = int(key_hash(statement, seed)[0], 16) % 2 == 0
            first, second = ("yes", "no") if yes_first else ("no", "yes")
            prompt = PERSONA_AB_TEMPLATE.format(question=question, first=first, second=second)
            letter = "A" if agrees == yes_first else "B"
            other_letter = "B" if letter == "A" else "A"
        else:
            raise DataFormatError(f"{path}: row {idx + 1}: answers {matching!r} / {other!r} are neither Yes/No nor "
                                  f"(A)/(B)")
        name = persona or path.stem
        as_persona = int(key_hash(f"default {statement}", seed)[:8], 16) / 16 ** 8 < default_rate
        records.append({"id": f"{path.stem}-{idx:05d}", "persona": name, "statement": statement,
                        "prompt": prompt, "answer_matching_behavior": letter,
                        "answer_not_matching_behavior": other_letter,
                        "answer_default": letter if as_persona else other_letter,
                        "persona_positive": positive or f"you are {name.replace('_', ' ')}",
                        "persona_negative": negative or f"you are not {name.replace('_', ' ')}",
                        "positive_is_A": letter == "A", "positive_is_yes": agrees})
    return _with_splits(records, "statement", validation_fraction, test_fraction, seed)

