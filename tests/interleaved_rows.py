"""Run by test_distributed.py as one of 2 processes with 2 CPU devices each: a data axis whose
devices alternate between the processes (as a TPU pod's ring order may) gives each process two
blocks of rows; the global batch placed from what each process reads is the one-process batch.

  JAX_COORDINATOR_ADDRESS=... JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=i JAX_NUM_CPU_DEVICES=2 \
      python tests/interleaved_rows.py DATA_DIR OUT.npz
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import mmvit.data as data  # noqa: E402
from mmvit import distributed, experiment, sharding  # noqa: E402


def main(data_dir: str, out: str):
  distributed.start(distributed.Launch.from_env(timeout_s=60))
  mine = [d for d in jax.devices() if d.process_index == 0]
  theirs = [d for d in jax.devices() if d.process_index == 1]
  order = [d for pair in zip(mine, theirs) for d in pair]  # p0, p1, p0, p1
  mesh = sharding.make_mesh({"data": 4}, order)
  blocks, count = sharding.process_rows(mesh, 8)
  kw = dict(batch_size=8, seed=5, data_dir=data_dir, augment={"noise_std": 0.1})
  it = data.train_iterator("digits_image", **kw, **experiment.shard_kwargs(mesh, 8))
  placed = [sharding.to_host(sharding.shard_batch(next(it), mesh, 8)) for _ in range(3)]
  if jax.process_index() == 0:
    np.savez(out, blocks=np.array(blocks), count=count,
             **{f"{k}_{i}": b[k] for i, b in enumerate(placed) for k in b})
  distributed.finished(True)


if __name__ == "__main__":
  main(*sys.argv[1:])
