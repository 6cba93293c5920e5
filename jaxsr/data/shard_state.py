"""The data stream's place in an Orbax checkpoint, per data shard (DIR/checkpoints/<step>/data).

Each process writes one `shard_<s>-of-<S>.json` per data shard it reads: the shard's
position (elements of its stream consumed, jaxsr.data.shards) and, for an exact resume on
the same layout, the process's own Grain iterator state. A resume where every process owns
the shards it owned restores that state as it was; on another number of processes each
process moves its fresh iterator to where its shards stand. A checkpoint of an older
version (`process_<i>-of-<n>.json`, Grain's own handler) resumes on the same process count.
"""
import dataclasses
import json
from typing import Any

import orbax.checkpoint as ocp

from jaxsr.data import shards


@dataclasses.dataclass(frozen=True)
class Layout:
    """This process's shards (`own`), samples per shard per batch, and the shard count."""
    own: tuple
    per_shard: int
    num_shards: int

    @classmethod
    def of(cls, config, process_index: int, process_count: int) -> "Layout":
        own, per_shard, num_shards = shards.plan(
            config.data.num_shards, config.train.batch_size, process_index, process_count)
        return cls(tuple(own), per_shard, num_shards)


def file_name(shard: int, num_shards: int) -> str:
    return f"shard_{shard}-of-{num_shards}.json"


class ShardStateHandler(ocp.CheckpointHandler):
    """Orbax handler: every process writes and reads the files of its own shards."""

    def save(self, directory, args: "ShardStateSave"):
        layout, state = args.layout, args.state
        n = shards.prefix_of_state(state)
        positions = (shards.positions_from_prefix(n, len(layout.own), layout.per_shard)
                     if n is not None else [None] * len(layout.own))
        for shard, position in zip(layout.own, positions):
            record = {"shard": shard, "num_shards": layout.num_shards, "position": position,
                      "per_shard": layout.per_shard, "owners": list(layout.own),
                      "process_state": state}
            (directory / file_name(shard, layout.num_shards)).write_text(
                json.dumps(record, indent=1))

    def restore(self, directory, args: "ShardStateRestore"):
        iterator, layout = args.iterator, args.layout
        paths = [directory / file_name(s, layout.num_shards) for s in layout.own]
        if not any(p.exists() for p in paths) and _legacy(directory, iterator):
            return iterator
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            raise ValueError(_layout_error(directory, layout, missing))
        records = [json.loads(p.read_text()) for p in paths]
        if all(r["owners"] == list(layout.own) and r["per_shard"] == layout.per_shard
               for r in records):
            state = records[0]["process_state"]     # the same layout: exactly as saved
        else:
            n = None
            if all(r["position"] is not None for r in records):
                n = shards.prefix_from_positions([r["position"] for r in records],
                                                 layout.per_shard)
            if n is None:
                raise ValueError(
                    f"the data shards of checkpoint {directory.parent} are out of step (an "
                    "unreadable or too small image was skipped in one of them), so this "
                    "checkpoint resumes only on the number of processes that saved it "
                    f"(owners {records[0]['owners']} per process)")
            state = shards.state_at_prefix(n, iterator.get_state())
        _set(iterator, state)
        return iterator

    def structure(self, directory):
        return None

    def metadata(self, directory):
        return None

    def finalize(self, directory):
        pass

    def close(self):
        pass


def _legacy(directory, iterator) -> bool:
    """Restores a checkpoint of Grain's own handler (per process) when it has one."""
    if not any(p.name.startswith("process_") for p in directory.iterdir()):
        return False
    import jax
    path = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if not path.exists():
        raise ValueError(f"checkpoint {directory.parent} keeps its data stream per process "
                         f"(an older jaxsr) and has no {path.name}: resume it on the number "
                         "of processes that saved it")
    _set(iterator, json.loads(path.read_text()))
    return True


def _set(iterator, state: dict) -> None:
    iterator.set_state(state)
    if hasattr(iterator, "start_prefetch"):     # as Grain's own handler: workers start now
        iterator.start_prefetch()


def _layout_error(directory, layout: Layout, missing) -> str:
    saved = sorted({p.name.rsplit("-of-", 1)[1].split(".")[0] for p in directory.iterdir()
                    if p.name.startswith("shard_")})
    fix = (f"resume with --config.data.num_shards={saved[0]} (the shard count it was saved "
           "with; config.data.num_shards=0 means one per process), on a number of processes "
           "that divides it" if saved else "resume on the layout that saved it")
    return (f"checkpoint {directory.parent} has no data-stream state for shard(s) "
            f"{', '.join(missing)} of this run ({layout.num_shards} data shards): it was "
            f"saved with {' or '.join(saved) or 'other'} data shards. To continue its data "
            f"stream, {fix}.")


@ocp.args.register_with_handler(ShardStateHandler, for_save=True)
@dataclasses.dataclass
class ShardStateSave(ocp.args.CheckpointArgs):
    state: Any              # the process's Grain iterator state after the step's batch
    layout: Layout


@ocp.args.register_with_handler(ShardStateHandler, for_restore=True)
@dataclasses.dataclass
class ShardStateRestore(ocp.args.CheckpointArgs):
    iterator: Any           # the process's Grain iterator, set in place
    layout: Layout
