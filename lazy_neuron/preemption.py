"""Stop requests: SIGTERM (a TPU/cluster preemption notice) or SIGINT -> the trainer checkpoints
the step in progress and returns, and every process of a run stops at the same step."""
from __future__ import annotations

import signal
import threading
from typing import Optional

import jax

from lazy_neuron import distributed


class StopRequests:
  """SIGTERM / SIGINT -> a flag the loop reads after each step; previous handlers restored on exit.

  Handlers can only be installed from the main thread; elsewhere (a trainer run in a thread) the
  signals keep their previous behaviour. A second signal raises KeyboardInterrupt: whoever sends it
  does not want to wait for the checkpoint (a save it interrupts leaves only an ignored tmp folder).
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: Optional[int] = None
    self._previous: dict = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
    return False

  def _handle(self, signum, frame):
    if self.signum is not None:
      raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
    self.signum = signum   # no printing here: the main thread may be inside a write to stdout

  def requested(self) -> Optional[int]:
    """The signal number if any process got one, else None (a collective with several processes;
    one process: no device sync)."""
    if jax.process_count() == 1:
      return self.signum
    got = [s for s in distributed.allgather_json(self.signum) if s]
    return got[0] if got else None
