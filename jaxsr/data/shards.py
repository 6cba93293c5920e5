"""Data shards: which images each JAX process reads, and how shards form the global batch.

The training images are split into `S` shards (`config.data.num_shards`, default one per
process); shard `s` holds images `s, s + S, s + 2S, ...` and has its own seeded shuffle.
Process `p` of `P` reads shards `p*S/P ... (p+1)*S/P - 1` and nothing else, and every local
batch is the concatenation of one per-shard batch of `B/S` samples from each of them, in
shard order. The global batch at step t is therefore the same for every process count that
divides `S`: two hosts with one shard each see exactly what one host with `num_shards=2`
sees, which is how a multi-host run is checked against a single-process one.

It is also how a run resumes on another number of processes: a checkpoint keeps where each
data *shard* stands (`shard_<s>-of-<S>.json`, jaxsr.data.shard_state), the number of its
elements consumed, and a process that owns other shards after the resize starts its stream
where they stand. So a run saved by N processes resumes on any M that divides `S` (keep
`config.data.num_shards` and `config.train.batch_size`) and continues the same global batches.
"""
import sys

import grain


def plan(num_shards: int, batch_size: int, process_index: int, process_count: int):
    """(this process's shard ids, samples per shard per batch); checks divisibility."""
    shards = num_shards or process_count
    if shards % process_count:
        fits = [m for m in range(1, shards + 1) if shards % m == 0]
        raise ValueError(f"config.data.num_shards={num_shards} must be a multiple of the "
                         f"{process_count} JAX processes: run on {', '.join(map(str, fits))} "
                         "processes (a resumed run keeps the shard count of its checkpoint, "
                         "so that it continues the same data stream), or start a new run")
    if batch_size % shards:
        raise ValueError(f"config.train.batch_size={batch_size} must be divisible by the "
                         f"{shards} data shards (config.data.num_shards, or one per process)")
    per_process = shards // process_count
    own = list(range(process_index * per_process, (process_index + 1) * per_process))
    return own, batch_size // shards, shards


def shard_indices(num_items: int, shard: int, num_shards: int) -> list[int]:
    if num_items < num_shards:
        raise ValueError(f"{num_items} training images cannot fill {num_shards} data shards: "
                         "lower config.data.num_shards or add images")
    return list(range(shard, num_items, num_shards))


class ShardBlocks(grain.MapDataset):
    """Endless stream whose consecutive blocks of `per_shard * len(parents)` elements are
    `per_shard` elements of each parent in turn: batching it by that block size gives
    batches that are per-shard batches concatenated in shard order."""

    def __init__(self, parents, per_shard: int):
        super().__init__(list(parents))
        self._per_shard = per_shard

    def __len__(self) -> int:
        return sys.maxsize            # the parents repeat forever

    def __str__(self) -> str:
        return f"ShardBlocks({len(self.parents)} shards x {self._per_shard})"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        block, offset = divmod(index, self._per_shard * len(self.parents))
        shard, k = divmod(offset, self._per_shard)
        return self.parents[shard][block * self._per_shard + k]


# ----------------------------------------------------------------------------------------
# Where a process's stream stands <-> where each of its shards stands.
#
# A process's Grain iterator counts elements of its ShardBlocks stream (before the filter
# that drops unreadable images): after n of them, shard j of its k shards (per_shard m
# each) has given b*m + clamp(r - j*m, 0, m) elements, with (b, r) = divmod(n, k*m).

def positions_from_prefix(n: int, k: int, per_shard: int) -> list[int]:
    block, rest = divmod(n, k * per_shard)
    return [block * per_shard + min(max(rest - j * per_shard, 0), per_shard) for j in range(k)]


def prefix_from_positions(positions, per_shard: int) -> int | None:
    """The n whose shard positions are `positions`, or None when none is (the shards are
    out of step: an unreadable image was skipped in one of them)."""
    n = sum(positions)
    return n if positions_from_prefix(n, len(positions), per_shard) == list(positions) else None


def prefix_of_state(state: dict) -> int | None:
    """Elements consumed by a Grain iterator state: {'next_index': n} (threads), or the
    round robin of `num_workers` worker processes, worker w reading elements w, w+W, ...
    (None when the workers are not at one prefix of the stream)."""
    if set(state) == {"next_index"}:
        return int(state["next_index"])
    workers = state.get("iterators_in_use_states")
    if not workers or any(set(w) != {"next_index"} for w in workers) or state.get("future_states"):
        return None
    counts = [int(w["next_index"]) for w in workers]
    n = sum(counts)
    if counts != [-(-(n - w) // len(counts)) for w in range(len(counts))]:
        return None
    return n if n % len(counts) == int(state.get("next_index_in_cycle", 0)) else None


def state_at_prefix(n: int, template: dict) -> dict:
    """`template` (a fresh iterator's state, same format) moved to n consumed elements."""
    if set(template) == {"next_index"}:
        return {"next_index": n}
    workers = len(template["iterators_in_use_states"])
    return {**template, "next_index_in_cycle": n % workers,
            "iterators_in_use_states": [{"next_index": -(-(n - w) // workers)}
                                        for w in range(workers)]}
