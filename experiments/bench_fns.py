"""The programs the benchmarks time: each network's config variants, its JAX forward and
train step (as jaxsr.inference / jaxsr.train run them) and the PyTorch reference twins
(tests/torch_refs), with their compile times, FLOPs and memory."""
import importlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments.costs import counted_flops, memory_bytes
from jaxsr import inference, objectives


def variant_config(network: str, variant: str, tiny: bool = False):
    c = common.load_config(f"configs/{network}.py" + (":small" if variant == "small" else ""))
    if tiny:   # the smoke test: the smallest thing that still has every block
        for k, v in {"n_feats": 8, "n_resblocks": 1, "n_resgroups": 1, "d": 8, "s": 4,
                     "m": 1, "chunk_size": 16}.items():
            if k in c.model:
                c.model[k] = v
        c.train.batch_size, c.train.patch_size = 2, 16 * c.scale
    return c


def random_params(model, lr_side: int, seed: int = 0):
    """N(0, 0.02) weights on the eval_shape structure (no init compile: fast for 70M)."""
    x = jax.ShapeDtypeStruct((1, lr_side, lr_side, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0),
                                                "lsh": jax.random.PRNGKey(1)},
                                               jnp.zeros(x.shape), train=False))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0, 0.02, s.shape).astype(s.dtype), shapes)


def torch_model(network: str, config):
    """The tests/torch_refs twin of the configured network (None when there is none)."""
    m, s = config.model, config.scale
    try:
        ref = importlib.import_module(f"tests.torch_refs.{network}")
    except ImportError:
        return None
    if network == "edsr":
        return ref.EDSR(s, m.n_resblocks, m.n_feats, m.res_scale)
    if network == "nlsn":
        net = ref.NLSN(s, m.n_resblocks, m.n_feats, m.res_scale, m.chunk_size, m.n_hashes)
        return _nlsn_attn_every(net, m.get("attn_every", 8))
    if network == "dlsn":
        return ref.DLSN(s, m.n_resgroups, m.n_resblocks, m.n_feats, m.res_scale,
                        m.chunk_size, m.n_hashes, m.get("reduction", 4))
    if network == "rcan":
        return ref.RCAN(s, m.n_resgroups, m.n_resblocks, m.n_feats, m.reduction)
    if network == "fsrcnn":
        return _FSRCNNRGB(ref.FSRCNN(s, d=m.d, s=m.s, m=m.m), s)
    return None


def _nlsn_attn_every(net, every: int):
    """The reference NLSN puts an NLSA after every 8th block; rebuild its body with the
    config's `attn_every` (the :small config uses 2) from the same blocks."""
    import torch
    if every == 8:
        return net
    blocks = [b for b in net.body if b.__class__.__name__ == "ResBlock"]
    nlsa = net.attention_layers()[0]
    body = [copy_module(nlsa)]
    for i, b in enumerate(blocks):
        body.append(b)
        if (i + 1) % every == 0:
            body.append(copy_module(nlsa))
    net.body = torch.nn.Sequential(*body, net.body[-1])
    return net


def copy_module(m):
    import copy
    return copy.deepcopy(m)


def _FSRCNNRGB(y_net, scale: int):  # noqa: N802 (a torch module factory)
    """RGB in/out around the Y network, the work jaxsr's FSRCNN does: YCbCr, chroma by
    torch bicubic (not MATLAB's, which only matters for values, not for timing)."""
    import torch
    from jaxsr.models.fsrcnn import RGB2YCC, YCC_OFFSET

    class FSRCNNRGB(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = y_net
            self.register_buffer("fwd", torch.tensor(RGB2YCC, dtype=torch.float32))
            self.register_buffer("inv", torch.tensor(np.linalg.inv(RGB2YCC), dtype=torch.float32))
            self.register_buffer("off", torch.tensor(YCC_OFFSET, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, x):
            ycc = torch.einsum("oc,nchw->nohw", self.fwd, x) + self.off
            cbcr = torch.nn.functional.interpolate(ycc[:, 1:], scale_factor=scale,
                                                   mode="bicubic", align_corners=False)
            out = torch.cat([self.net(ycc[:, :1]), cbcr], 1) - self.off
            return torch.einsum("oc,nchw->nohw", self.inv, out)
    return FSRCNNRGB()


# ---------------------------------------------------------------------------------------
# Timing

def median_time(fn, repeats: int) -> float:
    fn()                                             # warm-up (and torch allocator)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def jax_forward_fn(model, params, size: int) -> dict:
    """The compiled batch-1 forward at size x size: {'run', 'compile_s', 'flops',
    'peak_bytes'} (FLOPs counted as counted_flops does)."""
    fn = inference.bind(model, params)
    spec = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    t0 = time.perf_counter()
    compiled = fn.lower(spec).compile()
    compile_s = time.perf_counter() - t0
    x = jnp.asarray(np.random.default_rng(1).random(spec.shape, np.float32))
    p = fn.params
    return {"run": lambda: jax.block_until_ready(compiled(p, x)), "compile_s": compile_s,
            "flops": counted_flops(fn, spec), "peak_bytes": memory_bytes(compiled)}


def jax_forward(model, params, size: int, repeats: int) -> dict:
    f = jax_forward_fn(model, params, size)
    return {"jax_s": median_time(f["run"], repeats), "jax_compile_s": f["compile_s"],
            "peak_bytes": f["peak_bytes"], "flops": f["flops"],
            "flops_per_px": f["flops"] / size ** 2 if f["flops"] else None}


def jax_train_step_fn(config, model) -> dict:
    """One train step of the 'sr' objective, jitted with the state donated, as
    jaxsr.train runs it: {'run', 'compile_s', 'flops', 'peak_bytes'}."""
    objective = objectives.make(config, model)
    b, p = config.train.batch_size, config.train.patch_size
    hr = jnp.asarray(np.random.default_rng(2).integers(0, 256, (b, p, p, 3), np.uint8))
    state = train_state(objective, model, hr, p // config.scale)
    step = jax.jit(objective.train_step, donate_argnums=0)
    t0 = time.perf_counter()
    compiled = step.lower(state, hr, jax.random.PRNGKey(1)).compile()
    compile_s = time.perf_counter() - t0
    flops = counted_flops(step, state, hr, jax.random.PRNGKey(1))
    box = [state]

    def one():
        box[0], metrics = compiled(box[0], hr, jax.random.PRNGKey(1))
        jax.block_until_ready(metrics["loss"])
    return {"run": one, "compile_s": compile_s, "flops": flops,
            "peak_bytes": memory_bytes(compiled)}


def jax_train_step(config, model, repeats: int) -> dict:
    f = jax_train_step_fn(config, model)
    return {"jax_s": median_time(f["run"], repeats), "jax_compile_s": f["compile_s"],
            "peak_bytes": f["peak_bytes"], "flops": f["flops"]}


def train_state(objective, model, hr, lr_side: int):
    """The objective's initial state, with random params and `objective.tx.init` when the
    structure matches `init_state`'s (skips compiling the param init: on XLA:CPU the
    partitionable-threefry init of a network takes longer to compile than its train step);
    otherwise `init_state` itself."""
    want = jax.eval_shape(objective.init_state, jax.random.PRNGKey(0), hr)
    tx = getattr(objective, "tx", None)
    if tx is not None and set(want) == {"step", "params", "opt_state"}:
        params = jax.tree.map(jnp.asarray, random_params(model, lr_side))
        state = {"step": jnp.zeros((), jnp.int32), "params": params,
                 "opt_state": jax.jit(tx.init)(params)}
        if (jax.tree.structure(state) == jax.tree.structure(want) and
                jax.tree.map(jnp.shape, state) == jax.tree.map(lambda s: s.shape, want)):
            return state
    return jax.jit(objective.init_state)(jax.random.PRNGKey(0), hr)


def torch_forward_fn(net, size: int):
    import torch
    net.eval()
    x = torch.rand(1, 3, size, size)

    def run():
        with torch.no_grad():
            net(x)
    return run


def torch_forward(net, size: int, repeats: int) -> float:
    return median_time(torch_forward_fn(net, size), repeats)


def torch_train_step_fn(net, config):
    """Adam + L1 on a fixed batch (LR given), the torch twin of jax_train_step_fn."""
    import torch
    net.train()
    b, p, s = config.train.batch_size, config.train.patch_size, config.scale
    lr, hr = torch.rand(b, 3, p // s, p // s), torch.rand(b, 3, p, p)
    opt = torch.optim.Adam([q for q in net.parameters() if q.requires_grad], lr=1e-4)

    def one():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.l1_loss(net(lr), hr).backward()
        opt.step()
    return one


def torch_train_step(net, config, repeats: int) -> float:
    return median_time(torch_train_step_fn(net, config), repeats)


# ---------------------------------------------------------------------------------------
# Attention alone (where the time goes)
