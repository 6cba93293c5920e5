"""jaxsr: non-local sparse attention super-resolution in JAX/Flax."""
from jaxsr import xla_cpu as _xla_cpu

_xla_cpu.prefer_eigen_convolutions()   # before any jaxsr module imports JAX

__version__ = "0.1.0"
