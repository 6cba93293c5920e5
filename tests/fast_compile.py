"""jax.jit for test programs with XLA:CPU's backend (LLVM) optimisations off.

The tiny nets of the tests spend most of their time in compilation; without the backend
optimisations XLA:CPU compiles them 2.5-4x faster (e.g. tests/test_gan.py's GAN step).
The XLA program (HLO, its fusions and buffers) is the same; only the machine code is less
optimised, which these sizes do not notice. Not for tests that time programs or measure
their compiled memory; a function traced inside another jit or jaxpr takes plain jax.jit
(compiler options are for top-level programs only).
"""
import functools

import jax

FAST_COMPILE = {"xla_backend_optimization_level": 0}

jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


def subprocess_env(env: dict) -> dict:
    """`env` for a jaxsr subprocess whose programs compile the same way (XLA_FLAGS)."""
    flags = f"{env.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
    return {**env, "XLA_FLAGS": flags}
