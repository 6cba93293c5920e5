"""Data shards: which images each JAX process reads, and how shards form the global batch.

The training images are split into `S` shards (`config.data.num_shards`, default one per
process); shard `s` holds images `s, s + S, s + 2S, ...` and has its own seeded shuffle.
Process `p` of `P` reads shards `p*S/P ... (p+1)*S/P - 1` and nothing else, and every local
batch is the concatenation of one per-shard batch of `B/S` samples from each of them, in
shard order. The global batch at step t is therefore the same for every process count that
divides `S`: two hosts with one shard each see exactly what one host with `num_shards=2`
sees, which is how a multi-host run is checked against a single-process one, and how a run
can be resumed on another number of hosts without changing its data.
"""
import sys

import grain


def plan(num_shards: int, batch_size: int, process_index: int, process_count: int):
    """(this process's shard ids, samples per shard per batch); checks divisibility."""
    shards = num_shards or process_count
    if shards % process_count:
        raise ValueError(f"config.data.num_shards={num_shards} must be a multiple of the "
                         f"{process_count} JAX processes")
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
