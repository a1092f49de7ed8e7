"""Linear probes on residual-stream activations, one per layer (Alain & Bengio 2016; used for "latent knowledge" in
Lynch et al. 2024, eval 6, and in the interpret stage to ask whether a signal persists after a defence).

Activations are read at `blocks.{layer}.hook_resid_post` (decoder block outputs) at one token position with
`latlab.models.hooks.collect_residuals` (forward hooks on the decoder blocks); the probe is scikit-learn's L2
logistic regression on standardised features, scored by held-out accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def probe_accuracy(X: np.ndarray, y: np.ndarray, test_fraction: float = 0.3, seed: int = 0, C: float = 1.0) -> float:
    """Held-out accuracy of a logistic-regression probe on features X [n, d] for labels y [n]."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_fraction, random_state=seed, stratify=y)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    probe.fit(X_tr, y_tr)
    return float(probe.score(X_te, y_te))


def probe_layers(acts: dict[int, np.ndarray], y: Sequence[int], **kwargs) -> dict[int, float]:
    """layer -> held-out probe accuracy."""
    y = np.asarray(y)
    return {layer: probe_accuracy(X, y, **kwargs) for layer, X in acts.items()}
