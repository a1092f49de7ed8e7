"""DVC stage `check`: the params check (`latlab.check`) as the pipeline's first stage.

DVC deletes a stage's outputs just before it runs the stage's command, so a params error found by the stage itself
would cost that stage's earlier results. Every other stage descends from this one (`generate` and
`spawrious_generate` depend on its output) and DVC runs stages in topological order, so a bad params.yaml stops a
plain `dvc repro` here, one line per problem, before any result is touched. The output's text does not depend on the
params, so a change that passes the check reruns nothing downstream by itself.
"""

from __future__ import annotations

from pathlib import Path

from latlab.check import main as check_params

OUTPUT = Path("reports/params_check.txt")


def main() -> None:
    check_params([])  # one `error: ...` line per problem and exit status 2, as `python -m latlab.check`
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text("params.yaml passed `python -m latlab.check`\n")


if __name__ == "__main__":
    main()
