"""Activation sparsity: in-graph probe (models/mlp.py) and host-side summaries (summary.py)."""
from lazy_neuron.sparsity.summary import (LayerStats, flatten_stats, flops_skippable_metrics,
                                          load_npz, metrics_from_stats, save_npz)

__all__ = ["LayerStats", "flatten_stats", "flops_skippable_metrics", "metrics_from_stats",
           "save_npz", "load_npz"]
