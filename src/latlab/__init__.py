"""latlab: latent adversarial training, unlearning and interpretability research pipeline (library layer)."""

from latlab.env import apply_offline_env

apply_offline_env()

__version__ = "0.1.0"
