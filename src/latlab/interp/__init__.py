"""Interpretability: ACDC and EAP over an edge-level graph, planted ground-truth circuits, CAA steering reliability
(Tan et al. 2024), and linear probes. See the module docstrings for the papers each follows."""
