"""DVC code deps correct by construction: each stage depends on exactly the project files its module imports.

DVC has no notion of Python imports: a stage's `deps` are whatever paths dvc.yaml lists, and nothing tells it that
`stages/unlearn.py` runs `latlab/config.py`. Listed by hand, the code deps drift both ways: a helper the stage imports
is missing (an edit to it does not rerun the stage) or a whole package folder is listed (any edit in it reruns the
stage). This script computes them instead: it parses the stage module named in each `cmd` (`python -m stages.X ...`)
with `ast`, follows the imports transitively within the project packages (`src/latlab/`, `stages/`), adds every
package `__init__.py` on the way (importing `latlab.a.b` runs `latlab/__init__.py` and `latlab/a/__init__.py`) and
the data files a module locates beside itself (`Path(__file__).with_name("offline.env")`), and makes those files the
stage's code deps. Other deps (data/, models/, metrics/, ...) stay as they are, in their order, before the code deps.

    python scripts/stage_deps.py --check   # exit 1 and list, per stage, missing and superfluous code deps
    python scripts/stage_deps.py --write   # rewrite dvc.yaml (ruamel round trip: comments and layout survive)

Both take `--root DIR` (default: this repository) so that they work on any project with the same layout.
Imports are found statically, so the closure errs on the safe side: an import inside a function that a stage never
calls still counts, while `importlib.import_module(name)` with a computed name is not seen (the project has none).
"""

from __future__ import annotations

import latlab  # noqa: F401, I001  (first: applies src/latlab/offline.env before any third-party import)
import argparse
import ast
import re
import sys
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = {"latlab": "src/latlab", "stages": "stages"}  # top-level package -> its folder under the root
STAGE_MODULE = re.compile(r"\bpython3?\s+-m\s+([\w.]+)")


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The file of project module `name` (`latlab.x.y` -> src/latlab/x/y.py or .../x/y/__init__.py), else None."""
    top, *rest = name.split(".")
    if top not in PROJECT_PACKAGES:
        return None
    base = Path(root, PROJECT_PACKAGES[top], *rest)
    candidates = [base.parent / f"{base.name}.py"] if rest else []
    return next((path for path in candidates + [base / "__init__.py"] if path.is_file()), None)


def package_of(path: Path) -> str:
    """The package a .py file belongs to: the chain of enclosing folders that hold an `__init__.py`."""
    parts: list[str] = []
    folder = path.resolve().parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts)


def parse(path: Path) -> ast.Module:
    """The syntax tree of a file, parsed once per version of the file (check and write walk many stages)."""
    path = Path(path).resolve()
    return _parse(path, path.stat().st_mtime_ns)


@lru_cache(maxsize=None)
def _parse(path: Path, mtime_ns: int) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def module_imports(path: Path, root: Path = ROOT) -> set[str]:
    """Every module `path` imports, at top level or inside functions. `from a.b import c` gives `a.b`, and `a.b.c`
    too where c is a project submodule; relative imports are resolved against the file's package."""
    path = Path(path)
    names: set[str] = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = package_of(path).split(".")
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names
                         if module_file(f"{base}.{alias.name}", root) is not None)
    names.discard("")
    return names


def data_files(path: Path) -> set[Path]:
    """Files and folders `path` locates beside itself: `Path(__file__).with_name("x")`, `Path(__file__).parent / "x"`."""
    def beside_file(node: ast.AST) -> bool:
        return any(isinstance(n, ast.Name) and n.id == "__file__" for n in ast.walk(node))

    found: set[Path] = set()
    for node in ast.walk(parse(path)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "with_name"
                and beside_file(node.func.value) and node.args and isinstance(node.args[0], ast.Constant)):
            found.add(Path(path).parent / str(node.args[0].value))
        elif (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.left, ast.Attribute)
              and node.left.attr == "parent" and beside_file(node.left) and isinstance(node.right, ast.Constant)):
            found.add(Path(path).parent / str(node.right.value))
    return {file for file in found if file.exists()}  # a folder of data files is one DVC dep


def import_closure(module: str, root: Path = ROOT) -> list[Path]:
    """The project files (relative to `root`, sorted) that running `module` executes or reads at import."""
    root = Path(root)
    files: set[Path] = set()
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run first
        path = module_file(name, root)
        if path is not None:
            files |= {path} | data_files(path)
            todo.extend(module_imports(path, root))
    return sorted((file.relative_to(root) for file in files), key=Path.as_posix)


def is_code_dep(dep: object) -> bool:
    return isinstance(dep, str) and any(dep.rstrip("/") == folder or dep.startswith(f"{folder}/")
                                        for folder in PROJECT_PACKAGES.values())


def yaml_io() -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    return yaml


def stage_bodies(dvc: dict) -> Iterator[tuple[str, dict]]:
    """(name, the mapping holding cmd and deps) per stage; a `foreach` stage keeps them under `do`."""
    for name, stage in (dvc.get("stages") or {}).items():
        yield name, stage.get("do", stage)


def wanted_code_deps(body: dict, root: Path) -> list[str] | None:
    """The code deps of a stage: the union of the closures of the modules its cmd runs; None if it runs none."""
    cmd = body.get("cmd", "")
    modules = STAGE_MODULE.findall(" ".join(cmd) if isinstance(cmd, list) else str(cmd))
    if not modules:
        return None
    return sorted({path.as_posix() for module in modules for path in import_closure(module, root)})


def check(root: Path = ROOT) -> dict[str, tuple[list[str], list[str]]]:
    """{stage: (missing code deps, superfluous code deps)} for the stages of root/dvc.yaml that are wrong."""
    problems = {}
    for name, body in stage_bodies(yaml_io().load(Path(root, "dvc.yaml"))):
        wanted = wanted_code_deps(body, Path(root))
        if wanted is None:
            continue
        listed = [dep for dep in body.get("deps") or [] if is_code_dep(dep)]
        missing, superfluous = [d for d in wanted if d not in listed], [d for d in listed if d not in wanted]
        if missing or superfluous:
            problems[name] = (missing, superfluous)
    return problems


def replace_items(seq: list, items: list) -> None:
    """Replace the contents of a ruamel sequence, keeping each kept item's comment and the comment after the last."""
    comments = seq.ca.items
    last = len(seq) - 1
    tail = comments.pop(last, None)
    kept = {seq[i]: comment for i, comment in comments.items() if isinstance(seq[i], str)}
    comments.clear()
    seq[:] = items
    comments.update({i: kept[value] for i, value in enumerate(items) if isinstance(value, str) and value in kept})
    if tail is not None and items:
        comments[len(items) - 1] = tail


def write(root: Path = ROOT) -> list[str]:
    """Rewrite root/dvc.yaml with computed code deps; returns the names of the stages whose deps changed."""
    yaml, path = yaml_io(), Path(root, "dvc.yaml")
    dvc = yaml.load(path)
    changed = []
    for name, body in stage_bodies(dvc):
        wanted = wanted_code_deps(body, Path(root))
        if wanted is None:
            continue
        deps = body.get("deps")
        new = [dep for dep in deps or [] if not is_code_dep(dep)] + wanted
        if deps is None:
            body.insert(list(body).index("cmd") + 1 if "cmd" in body else len(body), "deps", new)
        elif list(deps) != new:
            replace_items(deps, new)
        else:
            continue
        changed.append(name)
    if changed:
        yaml.dump(dvc, path)
    return changed


def report(problems: dict[str, tuple[list[str], list[str]]]) -> str:
    lines = []
    for stage, (missing, superfluous) in problems.items():
        lines.append(f"stage {stage}:")
        lines += [f"  missing:     {dep}" for dep in missing] + [f"  superfluous: {dep}" for dep in superfluous]
    return "\n".join(lines)


def check_or_write_args(doc: str, check_help: str, write_help: str, argv: list[str] | None) -> argparse.Namespace:
    """The command line of a generator of files derived from dvc.yaml (this script, scripts/pipeline_doc.py):
    exactly one of --check / --write, and --root."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help=check_help)
    mode.add_argument("--write", action="store_true", help=write_help)
    parser.add_argument("--root", type=Path, default=ROOT, help="project root holding dvc.yaml (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = check_or_write_args(__doc__, "list wrong code deps, exit 1 if any",
                               "rewrite dvc.yaml with the computed code deps", argv)
    if args.write:
        changed = write(args.root)
        print(f"dvc.yaml: code deps rewritten for {', '.join(changed)}" if changed else "dvc.yaml: already right")
        return 0
    problems = check(args.root)
    print(report(problems) if problems else "dvc.yaml: code deps match the import closures")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
