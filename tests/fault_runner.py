"""`lazy-neuron` with faults injected at exact points, for tests/test_fault_tolerance.py.

  python tests/fault_runner.py kill_after_step=3,step_sleep=0.25,kill_in_save=8 train --config=...

kill_after_step=N: SIGKILL right after step N is dispatched (a real kill at an exact point; a timer
would race steps of a millisecond). step_sleep=S: sleep S seconds after each step, so that a test's
signal or timed kill lands while the loop runs. kill_in_save=N: SIGKILL from inside Orbax's write of
checkpoint N (its tmp folder exists, its `data` item is being written by the background thread).

The faults are patched in here, in the test's subprocess; the trainer has no test hooks.
"""
import os
import re
import signal
import sys
import time

# The repository this script belongs to, as `python -m lazy_neuron.cli` from its root would use.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _kill() -> None:
  os.kill(os.getpid(), signal.SIGKILL)


def install(kill_after_step=None, step_sleep=0.0, kill_in_save=None) -> None:
  import orbax.checkpoint as ocp
  from etils import epath

  from lazy_neuron import steps

  build = steps.Steps.__init__

  def init(self, setup):
    build(self, setup)
    jitted = self.train_step

    def train_step(state, window, batch):
      step = int(state["step"]) + 1  # a sync before each step: fine in a test
      out = jitted(state, window, batch)
      if step_sleep:
        time.sleep(step_sleep)
      if step == kill_after_step:
        _kill()
      return out

    self.train_step = train_step

  steps.Steps.__init__ = init

  if kill_in_save is not None:
    save = ocp.JsonCheckpointHandler._save_fn

    async def save_fn(self, x, directory):
      # `directory` is the `data` item in the step's folder <step>[.orbax-checkpoint-tmp-*]/data
      m = re.match(r"(\d+)", epath.Path(directory).parent.name)
      if m and int(m.group(1)) == kill_in_save:
        _kill()
      return await save(self, x, directory)

    ocp.JsonCheckpointHandler._save_fn = save_fn


def main() -> int:
  spec, *argv = sys.argv[1:]
  faults = dict(item.split("=", 1) for item in spec.split(",") if item)
  install(kill_after_step=int(faults["kill_after_step"]) if "kill_after_step" in faults else None,
          step_sleep=float(faults.get("step_sleep", 0)),
          kill_in_save=int(faults["kill_in_save"]) if "kill_in_save" in faults else None)
  from lazy_neuron import cli
  return cli.main(["lazy-neuron"] + argv)


if __name__ == "__main__":
  sys.exit(main())
