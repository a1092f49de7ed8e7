"""latlab.vision: Spawrious-style benchmark of spurious correlations with an explicit SCM data generator."""
