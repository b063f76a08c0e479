"""The input thread (mmvit/prefetch.py): it runs ahead of the loop, yet every step gets its own
batches, the iterator states after them, and any error at the step that would have met it."""

import threading
import time

import pytest

from mmvit.prefetch import Prefetcher


class Counting:
  """A stand-in iterator: batch i is i; its state is the next index."""

  def __init__(self):
    self.next = 0

  def read(self, step):
    if step == 5:
      raise ValueError("task t step 5: a bad record")
    value, self.next = self.next, self.next + 1
    return value, {"t": {"next_index": self.next}}


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_each_step_gets_its_batch_and_the_state_after_it(depth):
  it = Counting()
  with Prefetcher(it.read, range(5), {"t": {"next_index": 0}}, depth=depth) as reader:
    for step in range(5):
      item = reader.get(step)
      assert item.batches == step
      assert item.states == {"t": {"next_index": step + 1}}


def test_the_thread_runs_ahead_by_its_depth_and_no_further():
  it = Counting()
  with Prefetcher(it.read, range(100), {}, depth=3) as reader:
    reader.get(0)
    time.sleep(0.3)
    # Step 0 taken; the queue holds 3 more and the thread waits with a 4th prepared.
    assert it.next == 5


def test_an_error_is_raised_at_the_step_that_meets_it():
  it = Counting()
  with Prefetcher(it.read, range(10), {}, depth=2) as reader:
    for step in range(5):
      reader.get(step)
    with pytest.raises(ValueError, match="^task t step 5: a bad record$"):
      reader.get(5)


def test_closing_stops_the_thread():
  it = Counting()
  reader = Prefetcher(it.read, range(10**6), {}, depth=2)
  reader.get(0)
  reader.close()
  assert not any(t.name == "mmvit-prefetch" and t.is_alive() for t in threading.enumerate())
