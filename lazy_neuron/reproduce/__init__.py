"""`lazy-neuron reproduce`: the paper's claims, their experiments (configs/paper/) and verdicts.

claims.py: the registry and the rules (numpy only); command.py: flags, runs, judging, outputs.
"""
from lazy_neuron.reproduce.command import main

__all__ = ["main"]
