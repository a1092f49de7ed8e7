"""Great Expectations gate for every dataset the pipeline generates or loads.

Each dataset gets a suite (schema, non-empty text, label sets with no nulls, length bounds, harmful/benign balance)
run on the records, plus two suites on derived tables: rows per split (split sizes) and splits per leakage group (no
train/test overlap). The result is written as JSON and a small self-contained HTML page (GX Data Docs load scripts
from CDNs, which this offline pipeline cannot reach).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from latlab.config import ValidateConfig

SPLITS = ["train", "validation", "test"]
DOMAINS = ["general", "forget", "related"]


@dataclass
class DatasetSpec:
    """What a dataset must look like: required columns, text columns, label sets and its leakage key."""
    columns: list[str]
    text_columns: list[str]
    label_sets: dict[str, list] = field(default_factory=dict)
    leakage_key: list[str] = field(default_factory=lambda: ["prompt"])
    balance_column: str | None = None


SPECS: dict[str, DatasetSpec] = {
    "facts": DatasetSpec(
        columns=["id", "fact_id", "domain", "entity", "relation", "answer", "distractor", "format", "template",
                 "prompt", "completion", "chat", "split"],
        text_columns=["prompt", "completion"],
        label_sets={"domain": DOMAINS, "format": ["free", "ab", "completion"], "split": SPLITS},
        leakage_key=["prompt"]),
    "requests": DatasetSpec(
        columns=["id", "kind", "harmful", "verb", "target", "template", "prompt", "compliance", "refusal", "split"],
        text_columns=["prompt", "compliance", "refusal"],
        label_sets={"kind": ["harmful", "benign"], "split": SPLITS},
        leakage_key=["verb", "target"], balance_column="harmful"),
    "backdoor": DatasetSpec(
        columns=["id", "request_id", "kind", "clean_prompt", "prompt", "completion", "split"],
        text_columns=["prompt", "clean_prompt", "completion"],
        label_sets={"kind": ["harmful", "benign"], "split": SPLITS},
        leakage_key=["clean_prompt"]),
    "concepts": DatasetSpec(
        columns=["id", "persona", "statement", "prompt", "answer_matching_behavior", "answer_not_matching_behavior",
                 "answer_default", "persona_positive", "persona_negative", "positive_is_A", "positive_is_yes",
                 "split"],
        text_columns=["prompt", "statement", "persona_positive", "persona_negative"],
        label_sets={"answer_matching_behavior": ["A", "B"], "answer_not_matching_behavior": ["A", "B"],
                    "answer_default": ["A", "B"], "split": SPLITS},
        leakage_key=["statement"]),
    # real-data loaders (latlab.data.loaders); requests, A/B questions and personas reuse the schemas above
    "preferences": DatasetSpec(
        columns=["id", "kind", "prompt", "chosen", "rejected", "split"],
        text_columns=["prompt", "chosen", "rejected"],
        label_sets={"kind": ["harmless", "harmful"], "split": SPLITS},
        leakage_key=["prompt"]),
    "corpus": DatasetSpec(
        columns=["id", "domain", "document", "chunk", "text", "split"],
        text_columns=["text"],
        label_sets={"domain": ["forget", "retain"], "split": SPLITS},
        leakage_key=["document"]),
}


class DataValidationError(RuntimeError):
    """A failing expectation; the message names the dataset, the expectation and a few offending rows."""


def label_set_expectations(column: str, allowed: Iterable) -> list:
    """A label column's expectations: no nulls, and every value one of `allowed`.

    GX's in-set check skips nulls, so a record with a null label passes it and then silently drops out of every
    split (and out of the split-size and no-overlap tables); every label-set check goes through here so no label
    column can forget the not-null half."""
    import great_expectations as gx

    e = gx.expectations
    return [e.ExpectColumnValuesToNotBeNull(column=column),
            e.ExpectColumnValuesToBeInSet(column=column, value_set=list(allowed))]


def label_pair_expectations(column_a: str, column_b: str, pairs: Iterable[tuple]) -> list:
    """Two label columns that must agree (e.g. class name and class index): neither null, every pair in `pairs`
    (GX's pair check skips a row only when both values are missing, but a null in one is still no label)."""
    import great_expectations as gx

    e = gx.expectations
    return [e.ExpectColumnValuesToNotBeNull(column=column_a), e.ExpectColumnValuesToNotBeNull(column=column_b),
            e.ExpectColumnPairValuesToBeInSet(column_A=column_a, column_B=column_b, value_pairs_set=list(pairs))]


def failure_line(expectation: str, kwargs: Mapping, unexpected_count: int | None = None, observed=None,
                 examples: list | None = None) -> str:
    """One failed expectation as text: a null check says how many nulls in which column."""
    args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    line = f"{expectation}({args}) failed"
    if expectation == "expect_column_values_to_not_be_null" and unexpected_count:
        line += f": {unexpected_count} null value(s) in column '{kwargs.get('column')}'"
    elif unexpected_count:
        line += f": {unexpected_count} unexpected value(s)"
    if observed is not None:
        line += f"; observed {observed}"
    if examples:
        line += f"; offending rows: {examples}"
    return line


def _record_suite(gx, name: str, spec: DatasetSpec, cfg: ValidateConfig, min_rows: int):
    suite = gx.ExpectationSuite(name=f"{name}.records")
    e = gx.expectations
    derived = [f"{column}__words" for column in spec.text_columns]
    suite.add_expectation(e.ExpectTableColumnsToMatchSet(column_set=spec.columns + derived, exact_match=True))
    suite.add_expectation(e.ExpectTableRowCountToBeBetween(min_value=min_rows))
    for column in spec.text_columns:
        suite.add_expectation(e.ExpectColumnValuesToNotBeNull(column=column))
        suite.add_expectation(e.ExpectColumnValuesToBeBetween(column=f"{column}__words", min_value=1,
                                                              max_value=cfg.max_words))
    for column, allowed in spec.label_sets.items():
        for expectation in label_set_expectations(column, allowed):
            suite.add_expectation(expectation)
    suite.add_expectation(e.ExpectColumnValuesToBeUnique(column="id"))
    if spec.balance_column:
        low, high = cfg.harmful_fraction_bounds
        suite.add_expectation(e.ExpectColumnValuesToNotBeNull(column=spec.balance_column))  # the mean skips nulls
        suite.add_expectation(e.ExpectColumnMeanToBeBetween(column=spec.balance_column, min_value=low,
                                                            max_value=high))
    return suite


def _split_size_suite(gx, name: str, cfg: ValidateConfig):
    suite = gx.ExpectationSuite(name=f"{name}.split_sizes")
    suite.add_expectation(gx.expectations.ExpectColumnDistinctValuesToEqualSet(column="split", value_set=SPLITS))
    suite.add_expectation(gx.expectations.ExpectColumnValuesToBeBetween(column="rows",
                                                                        min_value=cfg.min_rows_per_split))
    return suite


def _leakage_suite(gx, name: str):
    suite = gx.ExpectationSuite(name=f"{name}.no_split_overlap")
    suite.add_expectation(gx.expectations.ExpectColumnValuesToBeBetween(column="splits", max_value=1))
    return suite


def _record_frame(records: list[dict], spec: DatasetSpec) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(records)
    for column in spec.text_columns:
        if column in frame:
            text = frame[column].fillna("").astype(str)
            frame[f"{column}__words"] = text.str.split().str.len()
    if spec.balance_column and spec.balance_column in frame:
        frame[spec.balance_column] = frame[spec.balance_column].astype(float)
    return frame


def _summaries(validation, frame: pd.DataFrame, dataset: str, suite_name: str, source: str | None) -> list[dict]:
    rows = []
    for result in validation.results:
        config = result.expectation_config
        kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)}
        details = result.result or {}
        unexpected_index = details.get("partial_unexpected_index_list") or []
        examples = details.get("partial_unexpected_list") or []
        if unexpected_index:
            label = next((c for c in ("id", "prompt") if c in frame), None)
            examples = [str(frame.loc[i, label] if label else frame.loc[i].to_dict()) for i in unexpected_index[:3]]
        rows.append({"dataset": dataset, **({"source": source} if source else {}), "suite": suite_name,
                     "expectation": config.type, "kwargs": kwargs,
                     "success": bool(result.success), "observed": details.get("observed_value"),
                     "unexpected_count": details.get("unexpected_count"), "examples": [str(x) for x in examples[:3]]})
    return rows


def _source_text(files) -> str | None:
    if files is None:
        return None
    return ", ".join(str(f) for f in files) if isinstance(files, (list, tuple)) else str(files)


def validate_datasets(datasets: dict[str, list[dict]], cfg: ValidateConfig,
                      sources: Mapping[str, str | Path | list] | None = None) -> dict:
    """Run every suite on every dataset; return the summary (no exception: see `raise_on_failure`).

    `sources` names the file (or files) each dataset was read from, for the failure messages."""
    import great_expectations as gx

    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # one bar per metric floods stage logs
    source = context.data_sources.add_pandas("latlab")
    results: list[dict] = []
    for name, records in datasets.items():
        spec = SPECS.get(name)
        if spec is None:
            raise DataValidationError(f"dataset '{name}': no expectation suite is defined for it")
        frame = _record_frame(records, spec)
        counts = frame.groupby("split").size().reset_index(name="rows") if "split" in frame else \
            pd.DataFrame({"split": [], "rows": []})
        key = [k for k in spec.leakage_key if k in frame]
        groups = frame.groupby(key)["split"].nunique().reset_index(name="splits") if key and "split" in frame \
            else pd.DataFrame({"splits": []})
        for table_name, table, suite in (
                ("records", frame, _record_suite(gx, name, spec, cfg, cfg.min_rows_per_split * len(SPLITS))),
                ("split_sizes", counts, _split_size_suite(gx, name, cfg)),
                ("no_split_overlap", groups, _leakage_suite(gx, name))):
            asset = source.add_dataframe_asset(f"{name}.{table_name}")
            batch = asset.add_batch_definition_whole_dataframe("all").get_batch(
                batch_parameters={"dataframe": table})
            validation = batch.validate(suite, result_format={"result_format": "COMPLETE",
                                                              "partial_unexpected_count": 5,
                                                              "return_unexpected_index_query": False})
            results.extend(_summaries(validation, table, name, suite.name, _source_text((sources or {}).get(name))))
    failed = [r for r in results if not r["success"]]
    return {"success": not failed, "evaluated": len(results), "failed": len(failed), "results": results}


def failure_message(summary: dict) -> str:
    lines = []
    for row in summary["results"]:
        if not row["success"]:
            source = f" ({row['source']})" if row.get("source") else ""
            lines.append(f"dataset '{row['dataset']}'{source}: " + failure_line(
                row["expectation"], row["kwargs"], row["unexpected_count"], row["observed"], row["examples"]))
    return "\n".join(lines)


def raise_on_failure(summary: dict) -> None:
    if not summary["success"]:
        raise DataValidationError(failure_message(summary))


def write_report(summary: dict, json_path: Path, html_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(summary, indent=2, default=str))
    rows = "".join(
        f"<tr class={'ok' if r['success'] else 'fail'}><td>{html.escape(r['dataset'])}</td>"
        f"<td>{html.escape(r['suite'])}</td><td>{html.escape(r['expectation'])}</td>"
        f"<td>{html.escape(json.dumps(r['kwargs'], default=str))}</td>"
        f"<td>{'pass' if r['success'] else 'FAIL'}</td><td>{html.escape(str(r['observed']))}</td>"
        f"<td>{html.escape('; '.join(r['examples']))}</td></tr>" for r in summary["results"])
    status = "all expectations passed" if summary["success"] else f"{summary['failed']} expectation(s) failed"
    html_path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>latlab data validation</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px 8px;font-size:13px}.ok td:nth-child(5){color:#080}.fail{background:#fee}"
        "</style></head><body>"
        f"<h1>Data validation</h1><p>{summary['evaluated']} expectations, {html.escape(status)}.</p>"
        "<table><tr><th>dataset</th><th>suite</th><th>expectation</th><th>arguments</th><th>result</th>"
        f"<th>observed</th><th>offending rows</th></tr>{rows}</table></body></html>")
