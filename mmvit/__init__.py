"""mmvit: PolyViT co-training and MBT fusion in JAX/Flax."""

from mmvit import hostmem as _hostmem

# Before JAX starts its threads: on a CPU-only run, freed step memory is kept for reuse.
_hostmem.configure()
