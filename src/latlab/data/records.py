"""Datasets on disk: one JSONL file per dataset, one JSON record per line, every record carrying a `split`."""

from __future__ import annotations

import json
from pathlib import Path

DATASETS = ("facts", "requests", "backdoor", "concepts")


class DataFormatError(ValueError):
    """A data file that is missing, unreadable or lacks a column; the message is one line naming the file (and the
    line or column)."""


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"dataset file not found: {path}")
    records = []
    with path.open() as handle:
        for line_no, line in enumerate(handle, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataFormatError(f"{path}:{line_no}: not valid JSON ({err.msg})") from None
    return records


def load_world(data_dir: Path) -> dict[str, list[dict]]:
    return {name: read_jsonl(data_dir / f"{name}.jsonl") for name in DATASETS}


def split_of(records: list[dict], split: str) -> list[dict]:
    return [r for r in records if r["split"] == split]
