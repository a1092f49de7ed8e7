"""Great Expectations checks of a Spawrious image manifest against its split definition (Lynch et al. 2023).

Two batches in an ephemeral GX context: the manifest itself (valid classes, backgrounds, environments, label/breed
consistency, no null in any of those label columns, every (part, env, breed, location) cell one the split defines)
and a per-group count table (observed count equals the definition's count; for groups whose size the definition leaves
open, at least one image). The summary is a small JSON-able dict (GX data docs need CDNs, which this project cannot
reach); `failure_message` turns its failed checks into text naming the manifest file, the column and the count.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from latlab.data.validation import failure_line, label_pair_expectations, label_set_expectations
from latlab.vision.splits import CLASSES, LOCATIONS, SplitDefinition


def _group_keys(frame: pd.DataFrame) -> pd.Series:
    return frame["part"] + "/" + frame["env"] + "/" + frame["breed"] + "/" + frame["location"]


def count_table(manifest: pd.DataFrame, definition: SplitDefinition, per_env_total: int,
                test_per_group: int) -> pd.DataFrame:
    """One row per defined group: key, observed count, expected count (-1 where any positive count is allowed)."""
    observed = _group_keys(manifest).value_counts()
    rows = [{"key": g.key, "count": int(observed.get(g.key, 0)), "expected": g.count if g.count > 0 else -1}
            for g in definition.groups(per_env_total, test_per_group)]
    return pd.DataFrame(rows)


def _run(context, name: str, frame: pd.DataFrame, expectations: list) -> list[dict]:
    import great_expectations as gx

    asset = context.data_sources.add_pandas(f"{name}_source").add_dataframe_asset(name=name)
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(batch_parameters={"dataframe": frame})
    suite = gx.ExpectationSuite(name=f"{name}_suite")
    for expectation in expectations:
        suite.add_expectation(expectation)
    result = batch.validate(suite)
    checks = []
    for item in result.results:
        kwargs = {k: v for k, v in item.expectation_config.kwargs.items() if k in ("column", "column_A", "column_B")}
        detail = {k: item.result.get(k) for k in ("observed_value", "unexpected_count", "partial_unexpected_list")
                  if item.result.get(k) not in (None, [])}
        checks.append({"batch": name, "expectation": item.expectation_config.type, **kwargs,
                       "success": bool(item.success), **json.loads(json.dumps(detail, default=str))})
    return checks


def validate_manifest(manifest: pd.DataFrame, definition: SplitDefinition, per_env_total: int,
                      test_per_group: int) -> dict:
    """Run the suites; returns {"split", "success", "rows", "checks": [...]} ready for json.dumps."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    E = gx.expectations
    keyed = manifest.assign(group_key=_group_keys(manifest))
    defined_keys = [g.key for g in definition.groups(per_env_total, test_per_group)]
    manifest_checks = _run(context, "manifest", keyed, [
        *label_set_expectations("part", ["train", "test"]),
        *label_set_expectations("env", [env.name for env in definition.environments]),
        *label_set_expectations("breed", CLASSES),
        *label_set_expectations("location", LOCATIONS),
        *label_pair_expectations("breed", "label", [(b, i) for i, b in enumerate(CLASSES)]),
        *label_set_expectations("group_key", defined_keys),
    ])
    counts = count_table(manifest, definition, per_env_total, test_per_group)
    fixed, open_ = counts[counts["expected"] >= 0], counts[counts["expected"] < 0]
    count_checks = _run(context, "group_counts", fixed, [
        E.ExpectColumnPairValuesToBeEqual(column_A="count", column_B="expected"),
    ])
    if len(open_):
        count_checks += _run(context, "open_group_counts", open_, [
            E.ExpectColumnValuesToBeBetween(column="count", min_value=1),
        ])
    checks = manifest_checks + count_checks
    return {"split": definition.name, "success": all(c["success"] for c in checks), "rows": int(len(manifest)),
            "groups": counts.to_dict(orient="records"), "checks": checks}


def failure_message(summary: dict, source: str | Path) -> str:
    """One line per failed check, naming the split, the manifest file it describes and the column."""
    lines = []
    for check in summary["checks"]:
        if not check["success"]:
            kwargs = {k: check[k] for k in ("column", "column_A", "column_B") if k in check}
            lines.append(f"spawrious split '{summary['split']}' ({source}), {check['batch']}: " + failure_line(
                check["expectation"], kwargs, check.get("unexpected_count"), check.get("observed_value"),
                check.get("partial_unexpected_list")))
    return "\n".join(lines)


def write_summary(summary: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(summary, indent=2))
