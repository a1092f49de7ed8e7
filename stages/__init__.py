"""DVC stages: one thin file per stage (read params, call latlab, write outputs, log to MLflow).

`python -m stages.<name>` runs this file first: importing latlab applies src/latlab/offline.env (hub offline,
telemetry off) before a stage imports transformers, MLflow or anything else that reads those settings at import."""

import latlab  # noqa: F401  (first: the offline environment, see above)
