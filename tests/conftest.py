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

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def repo_root() -> str:
  return REPO
