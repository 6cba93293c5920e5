"""Pallas kernels of the LSH chunk attention (below `jaxsr.attention.lsh`, which picks them
for config.model.attention_impl='pallas'). Entry points: `sorted_chunk_attention`, `gather_rows`, `gather_scalars`."""
from jaxsr.attention.kernels.entry import (attention_backward, attention_forward, gather_rows,
                                           gather_scalars, sorted_chunk_attention)

__all__ = ["attention_backward", "attention_forward", "gather_rows", "gather_scalars",
           "sorted_chunk_attention"]
