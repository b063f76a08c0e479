"""Input overlapped with compute: the batches of the coming steps are read, checked at the door
and placed on the devices by a background thread while the devices run the current step.

The schedule says which task(s) every step reads, so the thread can run ahead of the loop by
`depth` steps. It also records the data iterators' states after each step's batches: a
checkpoint of step s saves the position after s, not the thread's position ahead of it. An
error the thread meets (a bad record, a batch refused at the door) is raised by the loop at the
step that would have read it, with the same one-line message.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any


@dataclasses.dataclass
class Prepared:
  step: int
  batches: Any           # what `produce` returned for the step
  states: dict           # every data iterator's state after this step's batches
  error: BaseException | None = None


class Prefetcher:
  """Runs `produce(step) -> (batches, {task: iterator state changed by the step})` for each of
  `steps` in a thread, at most `depth` steps ahead; `get(step)` returns them in order.
  depth=0: no thread, `produce` runs in `get` (the synchronous loop)."""

  def __init__(self, produce: Callable[[int], tuple[Any, dict]], steps: Iterable[int],
               states: dict, depth: int = 2):
    self._produce, self._steps, self._states = produce, iter(steps), dict(states)
    self._depth = depth
    self._stop = threading.Event()
    self._queue: queue.Queue[Prepared] = queue.Queue(maxsize=max(depth, 1))
    self._thread = None
    if depth:
      self._thread = threading.Thread(target=self._run, name="mmvit-prefetch", daemon=True)
      self._thread.start()

  def _prepare(self, step: int) -> Prepared:
    try:
      batches, changed = self._produce(step)
    except BaseException as e:  # noqa: BLE001 -- handed to the loop, raised there
      return Prepared(step, None, dict(self._states), e)
    self._states.update(changed)
    return Prepared(step, batches, dict(self._states))

  def _run(self):
    for step in self._steps:
      item = self._prepare(step)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if self._stop.is_set() or item.error is not None:
        return

  def get(self, step: int) -> Prepared:
    if self._thread is None:
      item = self._prepare(next(self._steps))
    else:
      while True:
        try:
          item = self._queue.get(timeout=1.0)
          break
        except queue.Empty:
          if not self._thread.is_alive():
            raise RuntimeError("the input thread ended early") from None
    if item.step != step:
      raise RuntimeError(f"input thread out of step: prepared {item.step}, loop at {step}")
    if item.error is not None:
      raise item.error
    return item

  def close(self) -> None:
    """Stops the thread (it ends after the batch it is preparing) and drops what it holds."""
    self._stop.set()
    if self._thread is not None:
      while self._thread.is_alive():
        try:
          self._queue.get_nowait()
        except queue.Empty:
          self._thread.join(timeout=0.05)

  def __enter__(self) -> Prefetcher:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
