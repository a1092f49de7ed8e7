"""Prefect orchestration of the DVC stages (knows stage names, never the science).

Importing latlab first applies src/latlab/offline.env before Prefect, DVC or MLflow are imported."""

import latlab  # noqa: F401  (first: the offline environment)
