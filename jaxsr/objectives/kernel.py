"""KENet training: per-sample random kernels, blur + downsample on device, kernel loss.

Each step draws one kernel per HR crop with `jaxsr.data.degradations` (the 'kenet' preset
by default: anisotropic Gaussian, sigma in [0.2, 4], theta in [0, pi], 11x11 at x2,
21x21 at x4; true convolution, upper-left decimation, 8-bit LR), and trains the
estimator to predict that kernel from the LR with the adaptive attention loss
(`config.train.kernel_loss = 'attention'`, the paper) or plain L1 ('l1', its ablation).
Metrics: loss, kernel PSNR (dB, peak 1), gradient norm, learning rate.

Works for model 'kenet' (all parameters train) and for 'kenet_usrnet' (only the
`params['kenet']` subtree trains and has optimizer state; USRNet stays as loaded).
"""
import jax
import jax.numpy as jnp
import optax

from jaxsr import objectives, precision
from jaxsr.data import degradations
from jaxsr.models import init as init_lib
from jaxsr.models import kenet as kenet_lib


class KernelObjective:
    def __init__(self, config, model):
        self.config = config
        self.model = model
        self.subtree = "kenet" if hasattr(model, "estimate_kernel") else None
        estimator = model.kenet if self.subtree else model
        if estimator is None or not hasattr(estimator, "kernel_size"):
            raise ValueError(f"objective 'kernel' needs a kernel estimator; model "
                             f"{config.model.name!r} has none (use 'kenet' or 'kenet_usrnet')")
        self.spec = degradations.resolve(config)
        if self.spec.kernel == "none" or self.spec.kernel_size != estimator.kernel_size:
            raise ValueError(
                f"config.degradation (preset {config.degradation.name!r}) draws "
                f"{self.spec.kernel} kernels of size {self.spec.kernel_size}, but KENet "
                f"predicts {estimator.kernel_size}x{estimator.kernel_size}: set "
                "config.degradation.kernel_size or config.model.kernel_size to match")
        loss = config.train.get("kernel_loss", "attention")
        if loss not in ("attention", "l1"):
            raise ValueError(f"config.train.kernel_loss={loss!r}: use 'attention' or 'l1'")
        self.loss_name = loss
        # float32 for KENet (bf16 is refused with a message by precision.compute_dtype);
        # the call goes through precision.apply so a model that gains bf16 support is
        # covered here too.
        self.compute_dtype = precision.compute_dtype(config)
        self.matmul_precision = precision.matmul_precision(config)
        self.tx, self.schedule = objectives.adam(config.train)

    # -- parameters ------------------------------------------------------------------------
    def trainable(self, params):
        return params[self.subtree] if self.subtree else params

    def merge(self, params, trainable):
        return dict(params, **{self.subtree: trainable}) if self.subtree else trainable

    def init_state(self, rng, hr_uint8):
        hr_uint8, _ = objectives.split_batch(hr_uint8)
        s = self.config.scale
        lr = jnp.zeros((1, hr_uint8.shape[1] // s, hr_uint8.shape[2] // s, 3), jnp.float32)
        params = self.model.init({"params": rng}, lr, train=False)["params"]
        params = init_lib.init_params(self.config, params, jax.random.fold_in(rng, 1))
        return {"step": jnp.zeros((), jnp.int32), "params": params,
                "opt_state": self.tx.init(self.trainable(params))}

    # -- one step ----------------------------------------------------------------------------
    def synthesize(self, hr_uint8, rng):
        """(LR float [B, h, w, 3] in [0, 1], true kernels [B, l, l])."""
        hr = objectives.hr_to_float(objectives.synthesised_only(hr_uint8, "kernel"))
        lr_hw = (hr.shape[1] // self.spec.scale, hr.shape[2] // self.spec.scale)
        p = degradations.sample_params(rng, self.spec, hr.shape[0], lr_hw)
        lr = degradations.apply_degradation(hr * 255.0, p, self.spec) / 255.0
        return lr, p["kernel"]

    def estimate(self, params, lr):
        if self.subtree:
            return precision.apply(self.model, params, lr, self.compute_dtype,
                                   self.matmul_precision, train=True, method="estimate_kernel")
        return precision.apply(self.model, params, lr, self.compute_dtype,
                               self.matmul_precision, train=True)

    def kernel_loss(self, k_est, k_true):
        if self.loss_name == "l1":
            return jnp.mean(jnp.abs(k_est - k_true))
        return kenet_lib.attention_loss(k_est, k_true)

    def train_step(self, state, hr_uint8, rng):
        lr, k_true = self.synthesize(hr_uint8, rng)
        old = self.trainable(state["params"])

        def loss_and_grads(micro):      # one micro-batch (config.train.grad_accum_steps)
            lr_m, k_m = micro

            def loss_fn(trainable):
                k_est = self.estimate(self.merge(state["params"], trainable), lr_m)
                return self.kernel_loss(k_est, k_m), k_est

            (loss, k_est), grads = jax.value_and_grad(loss_fn, has_aux=True)(old)
            return loss, grads, jnp.mean(kenet_lib.kernel_psnr(k_est, k_m))

        loss, grads, kernel_psnr = objectives.accumulate(
            loss_and_grads, (lr, k_true), objectives.grad_accum_steps(self.config.train))
        updates, opt_state = self.tx.update(grads, state["opt_state"], old)
        new_trainable = optax.apply_updates(old, updates)
        ok = objectives.all_finite(loss, grads)
        kept = objectives.keep_if(ok, {"t": new_trainable, "o": opt_state},
                                  {"t": old, "o": state["opt_state"]})
        new = {"step": state["step"] + 1, "params": self.merge(state["params"], kept["t"]),
               "opt_state": kept["o"]}
        metrics = {"loss": loss, "kernel_psnr": kernel_psnr,
                   "grad_norm": optax.tree.norm(grads), "finite": ok,
                   "lr": self.schedule(state["step"])}
        return new, metrics


def make(config, model):
    return KernelObjective(config, model)
