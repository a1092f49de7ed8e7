"""Prefect orchestration of the DVC stages (knows stage names, never the science)."""
