"""NLSN pieces compiled for v4-32: n ResBlocks -> one NLSA -> n ResBlocks, forward +
backward at the paper train shape (16x48x48x256 over 16 chips), with the attention in
one formulation ('none' leaves the NLSA out, or 'sorted' / 'pallas'); prints the compile
wall and CPU seconds (experiments/results/compile_time_session8.json):

  python experiments/compile_sandwich.py pallas 1
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from experiments import aot_table  # noqa: E402
from jaxsr import accelerators, aot, target_platform, train  # noqa: E402
from jaxsr.attention import NonLocalSparseAttention, impl  # noqa: E402
from jaxsr.models import common  # noqa: E402

SHAPE = (16, 48, 48, 256)


class Sandwich(nn.Module):
    chunk_size: int
    n_hashes: int
    n_each_side: int
    attention: bool

    @nn.compact
    def __call__(self, x):
        for i in range(self.n_each_side):
            x = common.ResBlock(SHAPE[-1], 0.1, name=f"rb{i}")(x)
        if self.attention:
            x = NonLocalSparseAttention(chunk_size=self.chunk_size, n_hashes=self.n_hashes,
                                        reduction=4, res_scale=0.1, name="nlsa")(x)
        for i in range(self.n_each_side):
            x = common.ResBlock(SHAPE[-1], 0.1, name=f"rc{i}")(x)
        return x


def main(form: str, n_each_side: int) -> None:
    aot.prepare_host("v4-32")
    c = aot_table.load("configs/nlsn.py", "float32")
    net = Sandwich(c.model.chunk_size, c.model.n_hashes, n_each_side, form != "none")
    devices = aot.target_devices(accelerators.parse_target("v4-32"))
    repl, data = train.shardings(devices)
    with impl.use_formulation(None if form == "none" else form), \
            target_platform.tracing_for("tpu"), \
            jax.sharding.use_abstract_mesh(data.mesh.abstract_mesh):
        keys = {"params": jax.random.PRNGKey(0), "lsh": jax.random.PRNGKey(1)}
        params = jax.eval_shape(lambda x: net.init(keys, x),
                                jax.ShapeDtypeStruct(SHAPE, jnp.float32))
        params = train.abstract_like(params, repl)
        rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=repl)
        x = jax.ShapeDtypeStruct(SHAPE, jnp.float32, sharding=data)

        def loss(p, x, r):
            return jnp.mean(net.apply(p, x, rngs={"lsh": r}))
        t, cpu = time.time(), time.process_time()
        jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x, rng).compile()
    print(json.dumps({"formulation": form, "resblocks_each_side": n_each_side,
                      "wall": time.time() - t, "cpu": time.process_time() - cpu,
                      "load": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
