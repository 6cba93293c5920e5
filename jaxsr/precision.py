"""Mixed precision: which dtype each part of a step computes in (`config.train.compute_dtype`).

Policy ('bfloat16'; 'float32', the default, changes nothing):
  * parameters, optimizer state and checkpoints stay float32;
  * inside the loss function the float32 parameters and the input are cast to bfloat16
    and the model runs on them, so its convolutions and matmuls (attention scores and the
    value matmul included) take bfloat16 operands; the gradient flows back through the
    casts and arrives float32 at the float32 parameters;
  * the attention softmax / logsumexp, the merge of hashing rounds and the key norms run
    in float32 inside `jaxsr.attention` (upcast there, cast back for the value matmul);
  * the model output is cast back to float32 before the loss, which is float32;
  * the LR synthesis (degradations) stays float32: it happens outside the model.

Casting the parameters once per step, rather than giving every module a `dtype=`, keeps
the networks unchanged: a module computes in the dtype of what it is given. See
docs/precision.md for the measured tolerances.
"""
import collections
import contextlib

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# config.train.matmul_precision: how float32 convolutions and matmuls run on accelerators
# (jax.default_matmul_precision; docs/precision.md has the table per platform):
#   'default'  XLA's DEFAULT: one bf16 pass on a TPU, TF32 on an Ampere+ GPU (fastest);
#   'high'     bf16_3x on a TPU, TF32 on a GPU;
#   'highest'  full float32 everywhere (the official PyTorch matmuls on a GPU; slowest).
# The CPU computes float32 exactly in every case. The LSH hash projection always uses
# HIGHEST (`lsh._hash_block`): bucket ids are a discrete choice.
MATMUL_PRECISIONS = ("default", "high", "highest")

# Models whose code needs float32 (FFT-based data terms, kernel estimation with
# normalised outputs): bfloat16 is refused for them with a clear message.
FLOAT32_ONLY_MODELS = ("kenet", "usrnet", "gt_usrnet", "kenet_usrnet")


def resolve(name, key: str = "config.train.compute_dtype"):
    """The jnp dtype named `name` ('float32' or 'bfloat16'); `key` names the setting in
    the error message."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"{key}={name!r} is not a supported compute dtype; use one of "
                         f"{sorted(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[name]


def compute_dtype(config):
    """`config.train.compute_dtype` as a jnp dtype, checked against the model."""
    dtype = resolve(config.train.get("compute_dtype", "float32"))
    model = config.model.get("name", "")
    if dtype != jnp.float32 and model in FLOAT32_ONLY_MODELS:
        raise ValueError(f"config.train.compute_dtype={config.train.compute_dtype!r}: model "
                         f"{model!r} supports only 'float32' (mixed precision covers the "
                         "SR networks, not kenet/usrnet)")
    return dtype


def matmul_precision(config, key: str = "config.train.matmul_precision") -> str:
    """`config.train.matmul_precision` ('default' when absent), checked."""
    name = config.train.get("matmul_precision", "default")
    if name not in MATMUL_PRECISIONS:
        raise ValueError(f"{key}={name!r}: use one of {MATMUL_PRECISIONS} (how float32 "
                         "convolutions/matmuls run on TPU/GPU, docs/precision.md)")
    return name


def matmul_precision_scope(name: str | None):
    """A context in which traced convolutions and matmuls without an explicit precision
    use `name` (None / 'default': whatever is in effect, XLA's DEFAULT unless the user
    set JAX_DEFAULT_MATMUL_PRECISION)."""
    if name in (None, "default"):
        return contextlib.nullcontext()
    return jax.default_matmul_precision(name)


def is_float32(dtype) -> bool:
    return jnp.dtype(dtype) == jnp.float32


def cast_floating(tree, dtype):
    """Casts the floating-point leaves of `tree` to `dtype` (integers, keys, bools and
    non-array leaves are left alone)."""
    def cast(x):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(dtype)
        return x
    return jax.tree.map(cast, tree)


def apply(model, params, x, dtype, matmul_precision: str | None = None, **kwargs):
    """`model.apply({'params': params}, x, **kwargs)` computed in `dtype`.

    float32: exactly `model.apply` (no casts, so results are bit-identical to it).
    Otherwise params and x are cast to `dtype` and every floating output leaf is cast
    back to float32 (with `mutable=...` the returned collections too). Keyword inputs
    (rngs, train, per-image extras) are passed as given. matmul_precision
    (MATMUL_PRECISIONS, `matmul_precision(config)`): traced in that scope; the backward
    of the gradient inherits it (the precision is fixed on each forward op).
    """
    with matmul_precision_scope(matmul_precision):
        if is_float32(dtype):
            return model.apply({"params": params}, x, **kwargs)
        out = model.apply({"params": cast_floating(params, dtype)}, cast_floating(x, dtype),
                          **kwargs)
    return cast_floating(out, jnp.float32)


# ------------------------------------------------------------------------- inspection

def primitive_dtypes(fn, *args) -> collections.Counter:
    """Counts (primitive name, operand dtypes) over the jaxpr of `fn(*args)`, nested
    jaxprs (jit, custom_vjp, scan, ...) included: how tests and docs check which
    convolutions and matmuls really run in bf16."""
    return collections.Counter(
        (eqn.primitive.name, tuple(str(v.aval.dtype) for v in eqn.invars
                                   if hasattr(v.aval, "dtype")))
        for eqn in traced_eqns(fn, *args))


def traced_eqns(fn, *args):
    """Every equation of the jaxpr of `fn(*args)`, nested jaxprs included."""
    yield from _eqns(jax.make_jaxpr(fn)(*args).jaxpr)


def _eqns(jaxpr):
    for eqn in jaxpr.eqns:
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", None)          # ClosedJaxpr or Jaxpr
                if inner is not None:
                    yield from _eqns(getattr(inner, "jaxpr", inner))
        yield eqn
