"""steps.DevicePrefetch: the train loop's batches come from a background thread, in order, each with
the iterator state right after it; errors reach the loop; close() stops the thread."""
import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lazy_neuron.errors import UserError
from lazy_neuron.steps import DevicePrefetch


class Counting:
  """Batches {"x": [i, i]} with state {"next": i + 1}; raises UserError at `fail_at`."""

  def __init__(self, fail_at=None):
    self.i, self.fail_at = 0, fail_at

  def __next__(self):
    if self.i == self.fail_at:
      raise UserError(f"bad record {self.i}")
    self.i += 1
    return {"x": np.full((2,), self.i - 1, np.int32)}

  def get_state(self):
    return {"next": self.i}


@pytest.fixture(scope="module")
def sharding():
  return NamedSharding(Mesh(np.array(jax.devices()[:1]), ("data",)), P("data"))


@pytest.mark.parametrize("size", [0, 1, 2])
def test_batches_in_order_with_the_state_after_each(sharding, size):
  feed = DevicePrefetch(Counting(), sharding, size=size)
  try:
    for i in range(6):
      batch, state = next(feed)
      assert isinstance(batch["x"], jax.Array)
      np.testing.assert_array_equal(np.asarray(batch["x"]), [i, i])
      assert state == {"next": i + 1}  # not the state of the batches still waiting
  finally:
    feed.close()


def test_an_error_in_the_thread_is_raised_by_next_and_close_stops_the_thread(sharding):
  feed = DevicePrefetch(Counting(fail_at=3), sharding, size=2)
  assert [int(next(feed)[0]["x"][0]) for _ in range(3)] == [0, 1, 2]
  with pytest.raises(UserError, match="bad record 3"):
    next(feed)
  feed.close()
  assert not feed._thread.is_alive()  # pylint: disable=protected-access
  running = DevicePrefetch(Counting(), sharding, size=2)
  next(running)
  running.close()  # while the thread waits on a full queue
  assert not running._thread.is_alive()  # pylint: disable=protected-access
  running.close()  # idempotent
