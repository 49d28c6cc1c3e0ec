"""lazy_neuron: activation sparsity in Transformers, measured in-graph and enforced with Top-k."""

__version__ = "0.1.0"
