"""The spawrious_* stages go through stages.common.run_stage: a bad param or a failed manifest check is one line on
stderr and exit 2, no traceback; the results table and plots come from latlab.report.spawrious."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from latlab.report.spawrious import plot_worst_group, results_table

REPO = Path(__file__).resolve().parents[1]
TRAIN_ARGS = ["--method", "erm", "--split", "o2o_easy"]
STAGES = [("stages.spawrious_generate", None), ("stages.spawrious_train", TRAIN_ARGS),
          ("stages.spawrious_evaluate", None)]


def _params(directory: Path, **spawrious) -> Path:
    """The repository's params.yaml with `spawrious` sections overridden, written to `directory`."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in spawrious.items():
        raw["spawrious"][section] = {**raw["spawrious"][section], **values} if isinstance(values, dict) else values
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _run_main(module: str, argv: list[str] | None) -> int:
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_:
        main(argv) if argv is not None else main()
    return exit_.value.code


@pytest.mark.parametrize("module, argv", STAGES)
def test_bad_param_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, module, argv):
    monkeypatch.chdir(tmp_path)
    _params(tmp_path, train={"lr": -1})
    assert _run_main(module, argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "params.yaml: spawrious.train.lr: Input should be greater than 0 (got -1)" in lines[0]
    assert lines[0].startswith(f"[{module.split('.')[1]}")


def test_bad_param_from_the_command_line_has_no_traceback(tmp_path):
    _params(tmp_path, train={"lr": -1})
    path = os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "stages.spawrious_train", *TRAIN_ARGS], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == ("[spawrious_train@erm-o2o_easy] error: params.yaml: spawrious.train.lr: Input "
                                   "should be greater than 0 (got -1)"), done.stderr


def test_failed_manifest_check_names_file_column_and_count(tmp_path, monkeypatch, capsys):
    import stages.spawrious_generate as stage

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    raw = yaml.safe_load(_params(tmp_path, splits=["o2o_easy"], data={"per_env_total": 10, "test_per_group": 1})
                         .read_text())
    raw["spawrious"]["data"]["render"]["image_size"] = 8
    raw["tracking"] = {**raw.get("tracking", {}), "uri": (tmp_path / "mlruns").as_uri(), "log_models": False}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    generate_split = stage.generate_split

    def null_env(name, cfg):
        data = generate_split(name, cfg)
        data.manifest.loc[data.manifest.index[:2], "env"] = None
        return data

    monkeypatch.setattr(stage, "generate_split", null_env)
    assert _run_main("stages.spawrious_generate", None) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("[spawrious_generate] error: ")
    assert "spawrious split 'o2o_easy' (data/spawrious/o2o_easy/manifest.csv)" in err
    assert "2 null value(s) in column 'env'" in err


def test_results_table_and_plot(tmp_path):
    rows = [{"split": s, "method": m, "average_accuracy": 0.9, "worst_group_accuracy": 0.5, "train_seconds": 1.25,
             "counterfactual_invariance": 0.75} for s in ("o2o_easy", "m2m_easy") for m in ("erm", "groupdro")]
    rows[1]["selected"] = {"average_val": 0.25, "worst_class_val": 0.5, "oracle_worst_group": 0.625}
    table = results_table(rows, ["average_val", "worst_class_val", "oracle_worst_group"])
    assert table.splitlines()[2] == "| o2o_easy | erm | 0.900 | 0.500 | 0.750 | – | – | – | 1.2 |"
    assert table.splitlines()[3] == "| o2o_easy | groupdro | 0.900 | 0.500 | 0.750 | 0.250 | 0.500 | 0.625 | 1.2 |"
    assert len(table.splitlines()) == 6
    plot_worst_group(rows, tmp_path / "p" / "wga.png")
    assert (tmp_path / "p" / "wga.png").stat().st_size > 0
