"""The standard SR objective: LR synthesised on device from the HR crop (or the batch's
LR crop for paired data), pixel loss, Adam.

The model runs in `config.train.compute_dtype` (`jaxsr.precision`: float32 parameters and
optimizer state, bf16 convolutions/matmuls when asked); the LR synthesis and the loss
are float32.
"""
import jax
import jax.numpy as jnp
import optax

from jaxsr import objectives, precision
from jaxsr.data import degradations
from jaxsr.models import init as init_lib


class SRObjective:
    def __init__(self, config, model):
        self.config = config
        self.model = model
        self.compute_dtype = precision.compute_dtype(config)
        self.matmul_precision = precision.matmul_precision(config)
        self.tx, self.schedule = objectives.adam(config.train)
        self.accum_steps = objectives.grad_accum_steps(config.train)

    def init_params(self, rng, hr_uint8):
        hr_uint8, _ = objectives.split_batch(hr_uint8)
        lr_shape = (1, hr_uint8.shape[1] // self.config.scale,
                    hr_uint8.shape[2] // self.config.scale, 3)
        params_rng, lsh_rng = jax.random.split(rng)
        variables = self.model.init({"params": params_rng, "lsh": lsh_rng},
                                    jnp.zeros(lr_shape, jnp.float32), train=False)
        # config.model.init='torch': PyTorch's default init (jaxsr.models.init)
        return init_lib.init_params(self.config, variables["params"],
                                    jax.random.fold_in(params_rng, 1))

    def init_state(self, rng, hr_uint8):
        params = self.init_params(rng, hr_uint8)
        return {"step": jnp.zeros((), jnp.int32), "params": params,
                "opt_state": self.tx.init(params)}

    def synthesize(self, batch, rng):
        """(HR, LR) float in [0, 1]: the batch's LR when it has one (paired data), else LR
        synthesised from the HR with config.degradation."""
        hr_uint8, lr_uint8 = objectives.split_batch(batch)
        hr = objectives.hr_to_float(hr_uint8)
        if lr_uint8 is not None:
            return hr, objectives.hr_to_float(lr_uint8)
        return hr, degradations.synthesize_lr(hr, rng, self.config)

    def degrade(self, hr_uint8, rng):
        """(HR, LR, extra keyword inputs of the model) for one step."""
        return (*self.synthesize(hr_uint8, rng), {})

    def loss_and_grads(self, params, micro, lsh_rng):
        """(loss, grads) of one (micro-)batch (hr, lr, inputs)."""
        hr, lr, inputs = micro

        def loss_fn(params):
            sr = precision.apply(self.model, params, lr, self.compute_dtype,
                                 self.matmul_precision, train=True, rngs={"lsh": lsh_rng},
                                 **inputs)
            return objectives.pixel_loss(self.config.train.loss, sr, hr)

        return jax.value_and_grad(loss_fn)(params)

    def train_step(self, state, hr_uint8, rng):
        """One optimizer step on the global batch, as `config.train.grad_accum_steps`
        micro-batches whose gradients are averaged. The LR of the whole batch is
        synthesised first and every micro-batch uses the same hash rotations, so the
        step equals the one-batch step up to float32 summation order."""
        deg_rng, lsh_rng = jax.random.split(rng)
        batch = self.degrade(hr_uint8, deg_rng)
        loss, grads = objectives.accumulate(
            lambda micro: self.loss_and_grads(state["params"], micro, lsh_rng), batch,
            self.accum_steps)
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        ok = objectives.all_finite(loss, grads)
        new = objectives.keep_if(ok, {"params": params, "opt_state": opt_state},
                                 {"params": state["params"], "opt_state": state["opt_state"]})
        new["step"] = state["step"] + 1
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "finite": ok,
                   "lr": self.schedule(state["step"])}
        return new, metrics


def make(config, model):
    return SRObjective(config, model)
