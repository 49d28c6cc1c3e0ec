"""Test setup: 8 fake CPU devices (set before jax is imported) and a shared cache dir."""
import os
import tempfile

os.environ["XLA_FLAGS"] = " ".join([
    os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8",
    # A hung fake-device collective fails fast instead of stalling the suite.
    "--xla_cpu_collective_call_terminate_timeout_seconds=60"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One cache (corpus, tokenizer, TFDS digits) for the whole session, outside the user's home.
os.environ.setdefault("LAZY_NEURON_CACHE",
                      os.path.join(tempfile.gettempdir(), "lazy_neuron_test_cache"))
# JAX's persistent compilation cache, for this session and the CLI processes its tests start: many
# tests compile the same tiny programs again (a resumed run, one config through several commands).
# A fresh folder per session (removed at exit), so no executable outlives the code that made it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil

  _JAX_CACHE = tempfile.mkdtemp(prefix="lazy_neuron_jax_cache_")
  atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_JAX_CACHE,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def repo_root() -> str:
  return REPO


def _restore_checkpoint(workdir, config=None):
  """(step, state, data_state) of `workdir`'s newest checkpoint, restored onto one device, on the
  host. `config` defaults to the workdir's own config.json (a run with an overridden optimizer has
  its own state tree)."""
  import jax

  from lazy_neuron import checkpointing, evaluate, steps
  if config is None:
    config = evaluate._config_from_workdir(str(workdir))
  setup = steps.build_setup(config, jax.devices()[:1])
  ckpt = checkpointing.Checkpointer(str(workdir), every_steps=1)
  try:
    step = ckpt.latest_step()
    abstract = checkpointing.abstract_with_shardings(setup.abstract_state, setup.state_shardings)
    state, data_state = ckpt.restore(step, abstract)
  finally:
    ckpt.close()
  return step, jax.device_get(state), data_state


@pytest.fixture(scope="session")
def restore_checkpoint():
  """The tests' one checkpoint reader: `restore_checkpoint(workdir, config=None)`."""
  return _restore_checkpoint


@pytest.fixture(scope="session")
def reproduce_smoke(tmp_path_factory) -> str:
  """DIR of `lazy-neuron reproduce --claims=C1,C7 --scale=smoke`, made once per session (its runs
  take most of a minute on 2 cores): tests/test_reproduce.py checks it, the figure and notebook
  tests read it. Tests may add to it (another invocation into it) but not remove from it."""
  from lazy_neuron.reproduce import command
  out = str(tmp_path_factory.mktemp("rep") / "out")
  rc = command.main(["lazy-neuron reproduce", "--claims=C1,c7", "--scale=smoke", f"--out={out}"])
  assert rc == 0
  return out
