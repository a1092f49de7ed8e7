"""DVC stages: one thin file per stage (read params, call latlab, write outputs, log to MLflow)."""
