"""scripts/stage_deps.py: every DVC stage depends on exactly the project files its module imports (issue 13).

The repo test fails until `python scripts/stage_deps.py --write` has been run after a change to the imports or to
dvc.yaml; the end-to-end test runs real DVC on a small fake project to show that such deps make `dvc status` rerun
exactly the stages whose code changed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.stage_deps import ROOT, check, import_closure, module_imports, report, write, yaml_io

DVC = Path(sys.executable).parent / "dvc"


def test_dvc_deps_cover_import_closure():
    problems = check(ROOT)
    if problems:
        pytest.fail("dvc.yaml code deps differ from the stages' import closures "
                    f"(fix: python scripts/stage_deps.py --write):\n{report(problems)}", pytrace=False)


def make_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_closure_follows_relative_nested_and_submodule_imports(tmp_path):
    make_tree(tmp_path, {
        "stages/__init__.py": "",
        "stages/s.py": "from latlab.pkg import helper\n",
        "src/latlab/__init__.py": "from latlab.env import x\n",
        "src/latlab/env.py": "from pathlib import Path\nFILE = Path(__file__).with_name('settings.env')\n",
        "src/latlab/settings.env": "A=1\n",
        "src/latlab/pkg/__init__.py": "",
        "src/latlab/pkg/helper.py": "def f():\n    from . import inner\n    from ..other import thing\n",
        "src/latlab/pkg/inner.py": "import os\n",
        "src/latlab/other.py": "",
        "src/latlab/unused.py": "",
    })
    assert module_imports(tmp_path / "src/latlab/pkg/helper.py", tmp_path) == {
        "latlab.pkg", "latlab.pkg.inner", "latlab.other"}
    assert [p.as_posix() for p in import_closure("stages.s", tmp_path)] == [
        "src/latlab/__init__.py", "src/latlab/env.py", "src/latlab/other.py", "src/latlab/pkg/__init__.py",
        "src/latlab/pkg/helper.py", "src/latlab/pkg/inner.py", "src/latlab/settings.env",
        "stages/__init__.py", "stages/s.py"]


def test_check_catches_a_broken_rule(tmp_path):
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("src", "stages"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=ignore)
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    write(tmp_path)
    assert check(tmp_path) == {}  # the real project's written deps pass

    yaml = yaml_io()
    dvc = yaml.load(tmp_path / "dvc.yaml")
    deps = dvc["stages"]["unlearn"]["do"]["deps"]  # a foreach stage
    deps.remove("src/latlab/config.py")
    deps.append("src/latlab/interp")
    yaml.dump(dvc, tmp_path / "dvc.yaml")
    assert check(tmp_path) == {"unlearn": (["src/latlab/config.py"], ["src/latlab/interp"])}


FAKE_PROJECT = {
    "stages/__init__.py": "",
    "stages/a.py": "from pathlib import Path\n\nfrom latlab.helpers.text import greeting\n\n"
                   "Path('out_a.txt').write_text(greeting())\n",
    "stages/b.py": "from pathlib import Path\n\nPath('out_b.txt').write_text('b')\n",
    "src/latlab/__init__.py": "",
    "src/latlab/helpers/__init__.py": "",
    "src/latlab/helpers/text.py": "def greeting():\n    return 'hello'\n",
    "src/latlab/unrelated.py": "# used by no stage\n",
    "dvc.yaml": "stages:\n"
                "  a:\n    cmd: python -m stages.a\n    deps:\n      - src/latlab\n    outs:\n      - out_a.txt\n"
                "  b:\n    cmd: python -m stages.b\n    outs:\n      - out_b.txt\n",
}


def test_dvc_status_follows_the_import_closure(tmp_path):
    project = make_tree(tmp_path / "project", FAKE_PROJECT)
    write(project)
    assert check(project) == {}
    stages = yaml_io().load(project / "dvc.yaml")["stages"]
    assert list(stages["a"]["deps"]) == ["src/latlab/__init__.py", "src/latlab/helpers/__init__.py",
                                         "src/latlab/helpers/text.py", "stages/__init__.py", "stages/a.py"]
    assert list(stages["b"]["deps"]) == ["stages/__init__.py", "stages/b.py"]

    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "site-cache"),
           "PYTHONPATH": str(project / "src"), "PATH": f"{DVC.parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def run(*command: str) -> str:
        done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def stale() -> set[str]:
        return set(json.loads(run(str(DVC), "status", "--json")))

    run("git", "init", "-q")
    run(str(DVC), "init", "-q")
    run(str(DVC), "repro", "-q")
    assert (project / "out_a.txt").read_text() == "hello" and stale() == set()

    helper = project / "src/latlab/helpers/text.py"
    original = helper.read_text()
    helper.write_text(original.replace("hello", "hi"))
    assert stale() == {"a"}
    helper.write_text(original)
    assert stale() == set()
    (project / "src/latlab/unrelated.py").write_text("# still used by no stage, edited\n")
    assert stale() == set()


def _stages_depending_on(path: str) -> set[str]:
    """Stages of the repository's dvc.yaml (templates for foreach/matrix) whose deps list `path`."""
    stages = yaml_io().load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name for name, spec in stages.items() if path in (spec.get("do", spec).get("deps") or [])}


def test_real_helpers_rerun_exactly_the_stages_that_import_them():
    # a helper edited in the real repository reruns only the stages whose import closure holds it
    assert _stages_depending_on("src/latlab/vision/render.py") == {"spawrious_generate", "spawrious_train"}
    assert _stages_depending_on("src/latlab/interp/acdc.py") == {"interpret"}
    assert _stages_depending_on("src/latlab/training/r2d2.py") == {"r2d2"}
    # backdoor removal reuses the unlearning loop; its report stage reads metrics only
    assert _stages_depending_on("src/latlab/training/unlearning.py") == {"unlearn", "backdoor_removal"}
