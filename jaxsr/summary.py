"""Info mode: parameters per module and FLOPs per LR pixel (XLA cost analysis).

FLOPs come from XLA's cost analysis of the compiled inference forward on a 64x64 LR input
(config.info_size), divided by the number of LR pixels: the number users ask for when
comparing models (NLSN issue #17). Hash-attention FLOPs depend on the input size (buckets
and chunks), so the size is part of the report.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import fileio, models, paths, target_platform, xla_analysis
from jaxsr.attention import impl


def param_shapes(config):
    model = models.build_model(config)
    size = max(64, models.min_input_size(config))
    size += (-size) % models.input_multiple(config)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    rngs = {"params": jax.random.PRNGKey(0), "lsh": jax.random.PRNGKey(1)}
    variables = jax.eval_shape(lambda: model.init(rngs, jnp.zeros(x.shape), train=False))
    return model, variables.get("params", {}), size


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def per_module(params) -> dict:
    return {k: count_params(v) for k, v in params.items()}


def flops_per_lr_pixel(model, params_shapes, size: int) -> float | None:
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    fn = jax.jit(lambda p, lr: model.apply({"params": p}, lr, train=False))
    flops = xla_analysis.cost_report(fn.lower(params_shapes, x).compile())["flops"]
    return None if flops is None else flops / (size * size)


def write_info(config, workdir: str) -> dict:
    model, params, size = param_shapes(config)
    with impl.record_formulations() as attention:   # which LSH attention the trace used
        flops = flops_per_lr_pixel(model, params, size)
    info = {"model": config.model.name, "scale": int(config.scale),
            "params": count_params(params), "params_per_module": per_module(params),
            "flops_per_lr_pixel": flops, "flops_input_size": [size, size]}
    if attention:
        info["attention"] = (impl.describe_formulations(
            attention, config.model.get("attention_impl", "auto"))
            + f" on this host ({target_platform.current()})")
    fileio.write_json(paths.join(workdir, "info.json"), info, overwrite=True)
    print(format_info(info))
    return info


def format_info(info: dict) -> str:
    lines = [f"{info['model']} x{info['scale']}", f"{'module':<28}{'params':>14}"]
    lines += [f"{k:<28}{v:>14,}" for k, v in info["params_per_module"].items()]
    lines.append(f"{'total':<28}{info['params']:>14,}")
    if info["flops_per_lr_pixel"] is not None:
        lines.append(f"FLOPs per LR pixel: {info['flops_per_lr_pixel']:,.0f} "
                     f"(XLA cost analysis, {info['flops_input_size'][0]}x"
                     f"{info['flops_input_size'][1]} LR input)")
    if "attention" in info:
        lines.append(info["attention"])
    return "\n".join(lines)
