"""Repeated blocks run by `flax.linen.scan` (config.model.scan_blocks), remat
(config.train.remat), and the conversion between the two parameter layouts.

Unrolled layout (the canonical one, torch-style names): every block is its own subtree,
`body_3/body_0/kernel` [3, 3, C, C]. Scanned layout: a run of identical blocks is one
subtree whose leaves carry the block index in front, `scan_body/block/body_0/kernel`
[n, 3, 3, C, C]; nested runs (DLSN's LFFBs inside each GLAFFM) carry two indices. The
program then holds one copy of the block instead of n, which is what makes TPU compiles
of the 32-block / 10-group paper models short.

A model says which subtrees are stacked with `Stack`s (`param_stacks()`), and
`to_scanned` / `to_unrolled` move any tree between the layouts: params, EMA, optimizer
state, sown 'intermediates' and injected 'lsh_rotations'. `LayoutMixin.apply` converts
variables given in the other layout (logged once), so every tool that applies a model
accepts checkpoints of either layout.
"""
import dataclasses
import logging
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxsr import target_platform
from jaxsr.attention import lsh
from jaxsr.attention.modules import ROTATIONS_COLLECTION

SCAN_CHOICES = ("auto", True, False)
REMAT_BLOCKS = "blocks"
# jax.checkpoint_policies entries that are policies themselves (the others are factories
# that need names or offload targets).
REMAT_POLICIES = ("everything_saveable", "nothing_saveable", "dots_saveable",
                  "checkpoint_dots", "dots_with_no_batch_dims_saveable",
                  "checkpoint_dots_with_no_batch_dims")
REMAT_CHOICES = ("none", REMAT_BLOCKS) + REMAT_POLICIES
# Collections whose trees follow the module tree (stacked along the scan axis).
SCANNED_COLLECTIONS = ("params", "intermediates", "lsh_rotations")


# ----------------------------------------------------------------------------------------
# Config.

def scan_enabled(model_cfg) -> bool:
    """config.model.scan_blocks: True/False, or 'auto' = scanned when traced for a TPU or
    GPU (target_platform: also a deviceless TPU compile), unrolled on CPU (see
    docs/performance.md "Scanned blocks and remat")."""
    value = model_cfg.get("scan_blocks", "auto")
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if value not in SCAN_CHOICES or (not isinstance(value, bool) and value != "auto"):
        raise ValueError(f"config.model.scan_blocks={value!r}: use 'auto', True or False")
    if value == "auto":
        return target_platform.current() in ("gpu", "tpu")
    return bool(value)


def remat_from_config(config) -> str:
    """config.train.remat, validated: 'none' | 'blocks' | a jax.checkpoint_policies name."""
    train = config.get("train", None)
    value = train.get("remat", "none") if train is not None else "none"
    if value not in REMAT_CHOICES:
        raise ValueError(f"config.train.remat={value!r}: use one of {REMAT_CHOICES} ('blocks': "
                         "recompute each repeated block in the backward pass; a policy name: "
                         "jax.checkpoint_policies.<name> decides what is saved)")
    return value


def maybe_remat(block_cls, remat: str, static_argnums=()):
    """`block_cls` wrapped in nn.remat for remat != 'none' (names and params unchanged)."""
    if remat == "none":
        return block_cls
    policy = None if remat == REMAT_BLOCKS else getattr(jax.checkpoint_policies, remat)
    # prevent_cse=False: inside a scan the loop already stops XLA from merging the
    # recomputation with the forward pass (the JAX docs' advice for remat under scan).
    return nn.remat(block_cls, policy=policy, prevent_cse=False, static_argnums=static_argnums)


# ----------------------------------------------------------------------------------------
# Modules.

class Step(nn.Module):
    """One scan iteration: `block(**kwargs)` named 'block' applied to the carry, with the
    iteration's slice of the scanned input passed as `rotations=` when `rotations` is set
    (per-layer LSH rotations) and `call_kwargs` (e.g. train=True) as keywords."""
    block: Any
    kwargs: tuple = ()
    call_kwargs: tuple = ()
    rotations: bool = False

    @nn.compact
    def __call__(self, x, xs):
        kw = dict(self.call_kwargs)
        if self.rotations:
            kw["rotations"] = xs
        return self.block(**dict(self.kwargs), name="block")(x, **kw), None


def scan_blocks(block_cls, length: int, x, *, name: str, kwargs: Mapping = None,
                call_kwargs: Mapping = None, rotations=None, remat: str = "none",
                pass_rotations: bool = False):
    """Runs `length` copies of `block_cls(**kwargs)` over x with nn.scan, as the submodule
    `name` of the calling compact method (params `name/block/...`, stacked on axis 0).

    `rotations`: [length, ...] per-iteration rotations (or None: each block picks its own,
    from the per-iteration 'lsh' key or an injected 'lsh_rotations' slice);
    `pass_rotations`: the block takes a `rotations=` argument."""
    step = maybe_remat(Step, remat)
    scanned = nn.scan(step, variable_axes={c: 0 for c in SCANNED_COLLECTIONS},
                      split_rngs={"params": True, "lsh": True}, in_axes=0, length=length)
    module = scanned(block=block_cls, kwargs=tuple(sorted((kwargs or {}).items())),
                     call_kwargs=tuple(sorted((call_kwargs or {}).items())),
                     rotations=pass_rotations, name=name)
    return module(x, rotations)[0]


def wants_fixed_rotations(module: nn.Module) -> bool:
    """Whether a scanned model must pass the per-layer evaluation rotations into the scan:
    no 'lsh' RNG (training draws per layer inside) and no injected 'lsh_rotations'."""
    return not module.has_rng("lsh") and ROTATIONS_COLLECTION not in module.variables


def fixed_rotation_stack(paths: Sequence[str], kind: str, dim: int, n_hashes: int,
                         n_buckets: int, seed: int = 0) -> np.ndarray:
    """The evaluation rotations each layer draws in the unrolled model (its path there,
    e.g. 'body_9' or 'body_3/body_4'), stacked on axis 0: `lsh.fixed_rotations` per layer,
    so scanned and unrolled models evaluate with the same rotations."""
    return np.stack([lsh.fixed_rotations(seed, p, kind, dim, n_hashes, n_buckets)
                     for p in paths])


# ----------------------------------------------------------------------------------------
# Layouts.

@dataclasses.dataclass(frozen=True)
class Stack:
    """The scanned subtree `scanned` (leaves [*shape, ...]) holds the unrolled subtrees
    `unrolled` (row-major over `shape`)."""
    scanned: tuple
    unrolled: tuple
    shape: tuple

    def __post_init__(self):
        if int(np.prod(self.shape)) != len(self.unrolled):
            raise ValueError(f"Stack {self.scanned}: {len(self.unrolled)} paths for {self.shape}")


def _has_prefix(flat: Mapping, prefix: tuple) -> bool:
    return any(k[:len(prefix)] == prefix for k in flat)


def _stack(leaves: list, shape: tuple):
    first = leaves[0]
    if isinstance(first, tuple):        # a sown value: a tuple of arrays
        return tuple(_stack([leaf[i] for leaf in leaves], shape) for i in range(len(first)))
    if isinstance(first, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(shape + first.shape, first.dtype)
    xp = np if all(isinstance(x, (np.ndarray, np.generic)) for x in leaves) else jnp
    return xp.stack(leaves).reshape(shape + tuple(np.shape(first)))


def _take(leaf, index: tuple):
    if isinstance(leaf, tuple):
        return tuple(_take(x, index) for x in leaf)
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(leaf.shape[len(index):], leaf.dtype)
    return leaf[index]


def _stack_flat(flat: dict, stack: Stack) -> None:
    first = stack.unrolled[0]
    suffixes = [k[len(first):] for k in flat if k[:len(first)] == first]
    for suffix in suffixes:
        missing = [u for u in stack.unrolled if u + suffix not in flat]
        if missing:
            raise ValueError(f"cannot stack {'/'.join(first + suffix)}: "
                             f"{'/'.join(missing[0] + suffix)} is missing")
        leaves = [flat.pop(u + suffix) for u in stack.unrolled]
        flat[stack.scanned + suffix] = _stack(leaves, stack.shape)


def _unstack_flat(flat: dict, stack: Stack) -> None:
    n = len(stack.scanned)
    for key in [k for k in flat if k[:n] == stack.scanned]:
        leaf, suffix = flat.pop(key), key[n:]
        for i, u in enumerate(stack.unrolled):
            flat[u + suffix] = _take(leaf, np.unravel_index(i, stack.shape))


def layout_of(tree: Mapping, stacks: Sequence[Stack]) -> str | None:
    """'scanned', 'unrolled', or None (neither: no stacked block in the tree)."""
    flat = traverse_util.flatten_dict(dict(tree)) if tree else {}
    for s in stacks:
        if _has_prefix(flat, s.scanned):
            return "scanned"
        if _has_prefix(flat, s.unrolled[0]):
            return "unrolled"
    return None


def to_scanned(tree: Mapping, stacks: Sequence[Stack]) -> dict:
    """A module tree (params, intermediates, ...) in the unrolled layout -> scanned."""
    flat = traverse_util.flatten_dict(dict(tree))
    for s in stacks:            # inner stacks first (the model lists them so)
        _stack_flat(flat, s)
    return traverse_util.unflatten_dict(flat)


def to_unrolled(tree: Mapping, stacks: Sequence[Stack]) -> dict:
    flat = traverse_util.flatten_dict(dict(tree))
    for s in reversed(stacks):
        _unstack_flat(flat, s)
    return traverse_util.unflatten_dict(flat)


def convert(tree: Mapping, stacks: Sequence[Stack], layout: str) -> dict:
    """`tree` in `layout` ('scanned' | 'unrolled'), whichever layout it is in."""
    have = layout_of(tree, stacks)
    if have is None or have == layout:
        return tree
    return to_scanned(tree, stacks) if layout == "scanned" else to_unrolled(tree, stacks)


def convert_state(state, stacks: Sequence[Stack], layout: str, params_keys: Sequence[str]):
    """Every params-shaped tree inside a train state (params, EMA, the optimizer's mu/nu)
    in `layout`: the dicts that hold one of the stacks' top-level names of the other
    layout are converted, everything else (counts, the step, ...) is kept."""
    def walk(node):
        if isinstance(node, Mapping):
            if any(k in node for k in params_keys):
                return convert(node, stacks, layout)
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*[walk(v) for v in node])
        if isinstance(node, (tuple, list)):
            return type(node)(walk(v) for v in node)
        return node
    return walk(state)


def top_level_names(stacks: Sequence[Stack]) -> tuple:
    """The first path entries the stacks use in either layout (to recognise param trees)."""
    names = {s.scanned[0] for s in stacks} | {u[0] for s in stacks for u in s.unrolled}
    return tuple(sorted(names))


_logged = set()


class LayoutMixin:
    """For models with `scan_blocks` and `param_stacks()`: `apply` takes variables in
    either layout and converts them to the model's (logged once per direction)."""

    def layout(self) -> str:
        return "scanned" if self.scan_blocks else "unrolled"

    def param_stacks(self) -> tuple:
        """The `Stack`s of the scanned layout, also when this model runs unrolled."""
        raise NotImplementedError

    def apply(self, variables, *args, **kwargs):
        stacks, want = self.param_stacks(), self.layout()
        if stacks:
            converted = {}
            for col, tree in variables.items():
                have = layout_of(tree, stacks) if col in SCANNED_COLLECTIONS else None
                if have is not None and have != want:
                    if (col, want) not in _logged:
                        _logged.add((col, want))
                        logging.info("%s: '%s' given in the %s layout, converted to the %s "
                                     "one (config.model.scan_blocks)", type(self).__name__,
                                     col, have, want)
                    tree = convert(tree, stacks, want)
                converted[col] = tree
            variables = converted
        return super().apply(variables, *args, **kwargs)
