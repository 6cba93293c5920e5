"""Parameter initialisation: `config.model.init` = 'flax' | 'torch'.

'flax': the values the modules' own initializers give (Flax's lecun-normal kernels and zero
biases unless a module chooses otherwise, e.g. NLCUnet's convs and FSRCNN's).

'torch': what the official PyTorch code starts from. For every nn.Conv2d / nn.Linear that
is PyTorch's default, `kaiming_uniform_(a=sqrt(5))` on the weight, i.e.
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)), with
torch's fan_in = weight.size(1) x kh x kw: in_channels / groups x k x k for a (grouped,
depthwise) conv, in_features for a Linear, and out_channels / groups x k x k for a
ConvTranspose2d (its weight is [in, out / groups, k, k]). A model module lists the layers
whose official code initialises them explicitly in `INIT_RULES` ((regex on the module
path, rule), ...), e.g. FSRCNN's normal inits.

Why a pass over the initialised tree rather than per-layer `bias_init`s: a Flax bias
initializer is called with the bias shape only and cannot see the fan-in, and the rule
then covers every conv and dense layer of every model (attention modules included) in one
place. The pass draws new values for the kernels and biases of every module that has a
'kernel' (the rest, e.g. LayerNorm scales and PReLU slopes, keep the module's values).
"""
import itertools
import math
import re

import jax
import jax.numpy as jnp
from flax import traverse_util

STYLES = ("flax", "torch")


def uniform(bound: float):
    """U(-bound, bound) as a Flax initializer."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


# torch's default weight init as a Flax kernel initializer, for modules that set it
# themselves (fan_in from the kernel shape: [..., in / groups, out] for Conv and Dense).
TORCH_DEFAULT_KERNEL = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_fan_in(kernel_shape, transposed: bool = False) -> int:
    """torch's fan_in of the layer whose Flax kernel has `kernel_shape`: Conv [kh, kw,
    in / groups, out] and Dense [in, out] -> all but the last axis; ConvTranspose [kh, kw,
    in, out] -> kh x kw x out (torch reads dim 1 of its [in, out, kh, kw] weight)."""
    if transposed:
        return math.prod(kernel_shape[:-2]) * kernel_shape[-1]
    return math.prod(kernel_shape[:-1])


# Rules: rule(shapes: {'kernel': shape, 'bias': shape (when the layer has one)}) ->
# {leaf name: spec}, spec = ('uniform', bound) | ('normal', std) | ('zeros',) | ('keep',).
# `initialize` draws all uniform leaves of a model with one random op and all normal ones
# with another: a few hundred separate draws take XLA seconds to compile on a CPU.

def _uniform_rule(shapes, transposed: bool):
    bound = 1.0 / math.sqrt(torch_fan_in(shapes["kernel"], transposed))
    return {n: ("uniform", bound) for n in shapes}


def torch_default(shapes):
    """nn.Conv2d / nn.Linear defaults (weight and bias U(+-1/sqrt(fan_in)))."""
    return _uniform_rule(shapes, transposed=False)


def torch_transposed(shapes):
    """nn.ConvTranspose2d defaults (torch's fan_in = out_channels / groups x kh x kw)."""
    return _uniform_rule(shapes, transposed=True)


def keep(shapes):
    """The module's own initializer is the official one (e.g. a zero-initialised conv)."""
    return {n: ("keep",) for n in shapes}


def normal_zero_bias(std_fn):
    """weight ~ N(0, std_fn(kernel_shape)^2) (plain, not truncated), bias 0: the explicit
    `nn.init.normal_` + `zeros_` of e.g. the official FSRCNN."""
    def rule(shapes):
        return {n: ("normal", std_fn(shapes["kernel"])) if n == "kernel" else ("zeros",)
                for n in shapes}
    return rule


def _rule_for(path: str, rules):
    for pattern, rule in rules:
        if re.search(pattern, path):
            return rule
    return torch_default


def _draw(key, leaves, sampler):
    """{path: unit sample of its shape}, all from one draw of `sampler`."""
    sizes = [x.size for x in leaves.values()]
    u = sampler(key, (sum(sizes),))
    offsets = [0] + list(itertools.accumulate(sizes))
    return {p: u[a:b].reshape(x.shape).astype(x.dtype)
            for (p, x), a, b in zip(leaves.items(), offsets, offsets[1:])}


def leaf_specs(flat, rules) -> dict:
    """{param path: spec} for the kernels and biases of every module with a 'kernel'."""
    specs = {}
    for module in sorted({p.rsplit("/", 1)[0] for p in flat if p.endswith("/kernel")}):
        shapes = {n: flat[f"{module}/{n}"].shape for n in ("kernel", "bias")
                  if f"{module}/{n}" in flat}
        if len(shapes["kernel"]) not in (2, 4):
            raise ValueError(f"{module}/kernel has shape {shapes['kernel']}: not a Dense or "
                             "2-D conv kernel; give the module an INIT_RULES entry")
        specs.update({f"{module}/{n}": spec
                      for n, spec in _rule_for(module, rules)(shapes).items()})
    return specs


def initialize(params, rng, style: str = "torch", rules=()):
    """`params` (a Flax params tree) re-initialised in `style` ('flax': unchanged).

    `rules`: ((regex searched in the module path 'a/b/c', rule), ...); the first match
    wins, modules with a 'kernel' and no match get `torch_default`."""
    if style not in STYLES:
        raise ValueError(f"config.model.init={style!r}: use one of {', '.join(STYLES)}")
    if style == "flax":
        return params
    flat = traverse_util.flatten_dict(params, sep="/")
    specs = leaf_specs(flat, rules)
    u_key, n_key = jax.random.split(rng)
    draws = {
        "uniform": _draw(u_key, {p: flat[p] for p, s in specs.items() if s[0] == "uniform"},
                         lambda k, n: jax.random.uniform(k, n, jnp.float32, -1.0, 1.0)),
        "normal": _draw(n_key, {p: flat[p] for p, s in specs.items() if s[0] == "normal"},
                        lambda k, n: jax.random.normal(k, n, jnp.float32))}
    for path, spec in specs.items():
        if spec[0] in draws:
            flat[path] = draws[spec[0]][path] * spec[1]
        elif spec[0] == "zeros":
            flat[path] = jnp.zeros_like(flat[path])
    return traverse_util.unflatten_dict(flat, sep="/")


def init_params(config, params, rng):
    """The freshly initialised `params` of the model `config.model` describes, in the
    style of `config.model.init` with that model module's INIT_RULES (a scanned model's
    values are those of the unrolled one)."""
    from jaxsr.models import model_module, param_stacks, scan
    rules = getattr(model_module(config.model.name), "INIT_RULES", ())
    style = config.model.get("init", "flax") or "flax"
    stacks = param_stacks(config) if style != "flax" else ()
    layout = scan.layout_of(params, stacks) if stacks else None
    if layout != "scanned":
        return initialize(params, rng, style, rules)
    # Scanned (config.model.scan_blocks): drawn per layer as unrolled, so both layouts
    # start from the same values and the rules see per-layer paths and shapes.
    unrolled = initialize(scan.to_unrolled(params, stacks), rng, style, rules)
    return scan.to_scanned(unrolled, stacks)
