"""jaxsr: non-local sparse attention super-resolution in JAX/Flax."""

__version__ = "0.1.0"
