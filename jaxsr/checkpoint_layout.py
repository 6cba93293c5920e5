"""Restoring a train state written in the other parameter layout (config.model.scan_blocks):
unrolled (per-layer subtrees) <-> scanned (stacked), see jaxsr.models.scan.

`jaxsr.checkpoint.restore` asks `saved_layout` and `tree_layout`; when they differ the
state is read in its saved layout and converted by `restore_converted` (params, EMA and
the optimizer's per-parameter state; counts and steps are kept), logged once per restore.
"""
import logging

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxsr.models import scan


def saved_tree(directory, step: int) -> dict:
    """The saved state's structure (leaves: Orbax metadata with shape and dtype)."""
    from etils import epath
    return dict(ocp.StandardCheckpointHandler().metadata(
        epath.Path(str(directory)) / str(step) / "state"))


def tree_layout(state, stacks) -> str | None:
    """The layout of the state's params ('scanned' | 'unrolled'; None: nothing stacked)."""
    if not stacks or not isinstance(state, dict) or "params" not in state:
        return None
    return scan.layout_of(state["params"], stacks)


def saved_layout(mngr, step: int, stacks) -> str | None:
    if not stacks:
        return None
    try:
        tree = saved_tree(mngr.directory, step)
    except Exception:   # noqa: BLE001 - unreadable: the restore itself reports the damage
        return None
    return tree_layout(tree, stacks)


def restore_converted(restore_as, abstract_state, stacks, saved: str, want: str, where: str):
    """`restore_as(target)` reads the state in its saved layout on this process's first
    device; it is converted and placed as `abstract_state` says (any sharding, any number
    of processes: every process reads the whole state)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    names = scan.top_level_names(stacks)
    local = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                         scan.convert_state(abstract_state, stacks, saved, names))
    logging.info("%s has the %s parameter layout: converting it to the %s one of this run "
                 "(config.model.scan_blocks)", where, saved, want)
    state = scan.convert_state(jax.tree.map(np.asarray, restore_as(local)), stacks, want, names)
    return jax.tree.map(lambda x, t: jax.make_array_from_callback(
        t.shape, t.sharding, lambda index: x[index]), state, abstract_state)
