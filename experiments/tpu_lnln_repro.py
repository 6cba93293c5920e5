"""The TPU compiler crash LNLN's training step hit (libtpu 0.0.42, v4/v5e/v6e), reduced.

  .venv/bin/python experiments/tpu_lnln_repro.py [--target v5e:2x2]

Compiles (no TPU needed) the gradient of conv 1x1 -> region non-local on a 2x2 grid of a
[2, 24, 24, 16] map, two ways, each in a subprocess because the crash aborts the process:
  per_cell : theta/phi/g 1x1 convs applied to each sliced cell (LNLN before the fix) ->
             space_to_batch_converter.cc:541 Check failed: std::abs(halo_size -
             low_padding) <= spatial_split_size (12 vs. 3), SIGABRT (134 in a shell)
  whole    : the same 1x1 convs once on the whole map, then sliced (jaxsr.models.lnln now;
             the same numbers, 1x1 convs being per pixel) -> compiles
"""
import argparse
import subprocess
import sys

CHILD = r'''
import sys
import flax.linen as nn, jax, jax.numpy as jnp
from jax.sharding import SingleDeviceSharding
from jaxsr import accelerators, aot
from jaxsr.attention.dense import dense_attention
aot.prepare_host()
dev = aot.target_devices(accelerators.parse_target(sys.argv[2]))[0]
per_cell = sys.argv[1] == "per_cell"

class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(16, (1, 1))(x)
        emb = [nn.Conv(8, (1, 1)) for _ in range(3)]
        whole = None if per_cell else [e(x) for e in emb]
        out = []
        for r in (slice(0, 12), slice(12, 24)):
            for q in (slice(0, 12), slice(12, 24)):
                t = [e(x[:, r, q]) for e in emb] if per_cell else [w[:, r, q] for w in whole]
                out.append(dense_attention(*(u.reshape(2, 144, 8) for u in t)))
        return sum(jnp.sum(o ** 2) for o in out)

x = jnp.zeros((2, 24, 24, 16))
m = Net()
params = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), x))
spec = lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=SingleDeviceSharding(dev))
jax.jit(jax.grad(lambda p, x: m.apply(p, x))).lower(
    jax.tree.map(spec, params), spec(x)).compile()
print("compiled")
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="v5e:2x2")
    args = ap.parse_args()
    for variant in ("per_cell", "whole"):
        p = subprocess.run([sys.executable, "-c", CHILD, variant, args.target],
                           capture_output=True, text=True, timeout=600)
        crash = [ln for ln in p.stderr.splitlines() if "Check failed" in ln]
        print(f"{variant}: exit status {p.returncode}",
              crash[0].split("] ", 1)[-1] if crash else p.stdout.strip())


if __name__ == "__main__":
    main()
