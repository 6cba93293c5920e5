"""NLSN: n ResBlocks -> one NLSA -> n ResBlocks, fwd+bwd at the paper train shape for v4-32
(16x48x48x256 over 16 chips), one formulation (none / sorted / pallas); compile CPU-s:
  python experiments/compile_sandwich.py pallas 1
"""
import sys, os, time, json
sys.path.insert(0, "/work/main")
import jax, jax.numpy as jnp, flax.linen as nn
from experiments import aot_table
from jaxsr import aot, accelerators, train, target_platform, precision
from jaxsr.attention import impl
from jaxsr.models import common
from jaxsr.attention import NonLocalSparseAttention
aot.prepare_host("v4-32")
form, n_before = sys.argv[1], int(sys.argv[2])
c = aot_table.load("configs/nlsn.py", "float32")
attn, _ = aot_table.attention_modules(c)

class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i in range(n_before):
            x = common.ResBlock(256, 0.1, name=f"rb{i}")(x)
        if form != "none":
            x = NonLocalSparseAttention(chunk_size=c.model.chunk_size, n_hashes=c.model.n_hashes, reduction=4, res_scale=0.1, name="nlsa")(x)
        for i in range(n_before):
            x = common.ResBlock(256, 0.1, name=f"rc{i}")(x)
        return x
net = Net()
devices = aot.target_devices(accelerators.parse_target("v4-32"))
repl, data = train.shardings(devices)
with impl.use_formulation(None if form == "none" else form), target_platform.tracing_for("tpu"), \
        jax.sharding.use_abstract_mesh(data.mesh.abstract_mesh):
    x0 = jax.ShapeDtypeStruct((16, 48, 48, 256), jnp.float32)
    params = jax.eval_shape(lambda x: net.init({"params": jax.random.PRNGKey(0), "lsh": jax.random.PRNGKey(1)}, x), x0)
    params = train.abstract_like(params, repl)
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=repl)
    def fwd(p, x, r):
        return jnp.mean(net.apply(p, x, rngs={"lsh": r}))
    x = jax.ShapeDtypeStruct((16, 48, 48, 256), jnp.float32, sharding=data)
    t, c0 = time.time(), time.process_time()
    jax.jit(jax.grad(fwd, argnums=(0, 1))).lower(params, x, rng).compile()
    print(json.dumps({"formulation": form, "resblocks_each_side": n_before, "wall": time.time()-t, "cpu": time.process_time()-c0, "load": os.getloadavg()}), flush=True)
