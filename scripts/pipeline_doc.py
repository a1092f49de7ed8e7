"""docs/pipeline.md from dvc.yaml: per stage, what it does (the first sentence of its module's docstring), what it
reads (data, models, reports and metrics of other stages; its code deps are left out: they are each stage's import
closure, `scripts/stage_deps.py`), its params sections and what it writes (outs, metrics, plots).

    python -m scripts.pipeline_doc --write   # regenerate docs/pipeline.md (also part of `make deps`)
    python -m scripts.pipeline_doc --check   # exit 1 when docs/pipeline.md differs from what dvc.yaml gives

Generated, so the table cannot drift from dvc.yaml: tests/test_pipeline_doc.py runs the check.
"""

from __future__ import annotations

import latlab  # noqa: F401, I001  (first: applies src/latlab/offline.env before any third-party import)
import ast
import re
import sys
from pathlib import Path

import yaml

from scripts.stage_deps import ROOT, STAGE_MODULE, check_or_write_args, is_code_dep, module_file

DOC = Path("docs/pipeline.md")
SENTENCE_END = re.compile(r"(?<!\bal)(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z`(])")  # "Lynch et al. (2024)" goes on
HEADER = """# The pipeline, stage by stage

Generated from `dvc.yaml` by `python -m scripts.pipeline_doc --write` (`make deps`); do not edit by hand
(`tests/test_pipeline_doc.py` fails when this file and dvc.yaml disagree). Each stage is `stages/<stage>.py`; its code
deps (its import closure under `src/latlab/` and `stages/`) are not listed here. `${key}` / `${item}`: one stage per
entry of the table or grid named under *runs*. Output names follow [naming.md](naming.md).

| stage | what it does | runs | reads | params | writes |
| --- | --- | --- | --- | --- | --- |
"""


def _paths(entries: list | None) -> list[str]:
    """dvc.yaml lists paths as strings or as one-key mappings (path -> options)."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def purpose(cmd: str, root: Path) -> str:
    """The first sentence of the docstring of the module the stage's cmd runs, without its `DVC stage X:` lead."""
    modules = STAGE_MODULE.findall(cmd)
    path = module_file(modules[0], root) if modules else None
    doc = ast.get_docstring(ast.parse(path.read_text())) if path else None
    if not doc:
        return ""
    text = " ".join(doc.split("\n\n")[0].split())
    if text.startswith("DVC stage") and ":" in text:
        text = text.split(":", 1)[1].strip()
    return SENTENCE_END.split(text)[0].rstrip(".")


def _cell(items: list[str]) -> str:
    return "<br>".join(f"`{item}`" for item in items) or "–"


def stage_rows(dvc: dict, root: Path) -> list[str]:
    rows = []
    for name, stage in (dvc.get("stages") or {}).items():
        body = stage.get("do", stage)
        if "foreach" in stage:
            runs = f"each entry of `{stage['foreach']}`"
        elif "matrix" in stage:
            runs = " x ".join(f"`{axis}` of `{values}`" for axis, values in stage["matrix"].items())
        else:
            runs = "once"
        cmd = body.get("cmd", "")
        reads = [d for d in _paths(body.get("deps")) if not is_code_dep(d)]
        params = [p for p in _paths(body.get("params"))]
        writes = _paths(body.get("outs")) + _paths(body.get("metrics")) + _paths(body.get("plots"))
        rows.append(f"| `{name}` | {purpose(cmd if isinstance(cmd, str) else ' '.join(cmd), root)} | {runs} | "
                    f"{_cell(reads)} | {_cell(params)} | {_cell(writes)} |")
    return rows


def render(root: Path = ROOT) -> str:
    dvc = yaml.safe_load(Path(root, "dvc.yaml").read_text())
    return HEADER + "\n".join(stage_rows(dvc, Path(root))) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = check_or_write_args(__doc__, "exit 1 when docs/pipeline.md is not what dvc.yaml gives",
                                "regenerate docs/pipeline.md", argv)
    path, text = Path(args.root, DOC), render(args.root)
    if args.write:
        path.write_text(text)
        print(f"{DOC}: written")
        return 0
    current = path.read_text() if path.exists() else ""
    if current != text:
        print(f"{DOC}: out of date with dvc.yaml (fix: python -m scripts.pipeline_doc --write)")
        return 1
    print(f"{DOC}: matches dvc.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
