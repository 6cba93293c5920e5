"""Pallas kernels of the LSH chunk attention (below `jaxsr.attention.lsh`, which picks them
for config.model.attention_impl='pallas'). Entry point: `sorted_chunk_attention`."""
from jaxsr.attention.kernels.entry import sorted_chunk_attention

__all__ = ["sorted_chunk_attention"]
