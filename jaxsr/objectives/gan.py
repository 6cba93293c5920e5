"""NLCUnetGAN objective: generator L1 + VGG19 perceptual + 0.1 x vanilla GAN, with a
really trained U-Net SN discriminator (Real-ESRGAN's `UNetDiscriminatorSN`).

One step, in BasicSR/Real-ESRGAN order:
  1. LR synthesised on device from the HR crop (`SRObjective.synthesize`, as the 'sr' stage);
  2. generator: sr = G(lr); loss = w_pix * L1(sr, hr) + w_percep * Perceptual(sr, hr)
     + w_gan * BCE(D(sr), real); D's weights are constants here (its spectral-norm
     power iteration is not stored); Adam step on G;
  3. discriminator: BCE(D(hr), real) + BCE(D(sr_before_update), fake) (sr detached);
     one spectral-norm power iteration (stored in 'disc_stats'); Adam step on D.
Deviation from the official NLCUnet-gan code on purpose: it re-created D with random
weights inside every step and built D's optimizer over G's parameters, so its D was never
trained (architectures.md 4.4); here D has its own optimizer and state.

State (one pytree, so the train loop's Orbax checkpoint holds both networks and resume is
exact): 'step', 'params' (G), 'opt_state' (G), 'disc_params', 'disc_stats' (SN u/sigma),
'disc_opt_state', 'vgg_params' (frozen; kept in the state rather than closed over so that
the 80 MB of VGG19 weights are jit arguments, not constants baked into the compiled step).

Config: `config.loss.{pixel_weight, perceptual_weight, gan_weight, layer_weights,
vgg19_weights, vgg19_random}`, `config.discriminator.{num_feat, skip_connection, lr, b1,
b2}`; the generator's optimizer is the shared `config.train` Adam (lr 1e-4, constant).

Mixed precision (`config.train.compute_dtype`, `jaxsr.precision`): G and the VGG19 features
run in that dtype, the losses in float32. D stays float32 (its spectral-norm power
iteration normalises with eps; D is small next to G and VGG19).
"""
import logging

import jax
import jax.numpy as jnp
import optax

from jaxsr import objectives, precision
from jaxsr.models import discriminator as disc_lib
from jaxsr.models import init as init_lib
from jaxsr.models import vgg as vgg_lib
from jaxsr.objectives.sr import SRObjective

D_INIT_SIDE = 32   # D is fully convolutional: its parameter shapes do not depend on size


def bce_with_logits(logits, real: bool):
    """Mean BCE-with-logits against an all-real (1) or all-fake (0) target."""
    target = jnp.ones_like(logits) if real else jnp.zeros_like(logits)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target))


class GANObjective(SRObjective):
    def __init__(self, config, model):
        super().__init__(config, model)          # G's Adam, LR synthesis, init_params
        loss = config.loss
        self.w_pix = float(loss.get("pixel_weight", 1.0))
        self.w_percep = float(loss.get("perceptual_weight", 1.0))
        self.w_gan = float(loss.get("gan_weight", 0.1))
        weights = loss.get("layer_weights", None)
        self.layer_weights = dict(weights) if weights else dict(vgg_lib.DEFAULT_LAYER_WEIGHTS)
        self.vgg = vgg_lib.VGG19Features(tuple(self.layer_weights))
        # Loaded now so that a missing file stops the run before any compilation.
        self._vgg_params = vgg_lib.load_vgg19_params(loss, tuple(self.layer_weights))
        self.disc = disc_lib.build(config)
        d = config.discriminator
        self.tx_d = optax.adam(d.get("lr", 1e-4), b1=d.get("b1", 0.9), b2=d.get("b2", 0.99),
                               eps=config.train.eps)

    # ------------------------------------------------------------------ state

    def init_state(self, rng, hr_uint8):
        g_rng, d_rng = jax.random.split(rng)
        state = super().init_state(g_rng, hr_uint8)
        dvars = self.disc.init({"params": d_rng},
                               jnp.zeros((1, D_INIT_SIDE, D_INIT_SIDE, 3), jnp.float32))
        # Real-ESRGAN's D keeps torch's defaults; config.model.init='torch' gives them to
        # D's biases too (its kernels already have them).
        d_params = init_lib.initialize(dvars["params"], jax.random.fold_in(d_rng, 1),
                                       self.config.model.get("init", "flax") or "flax")
        state.update(disc_params=d_params, disc_stats=dvars["batch_stats"],
                     disc_opt_state=self.tx_d.init(d_params),
                     vgg_params=self._vgg_params)
        return state

    # ------------------------------------------------------------------ losses

    def d_logits(self, d_params, d_stats, x, update_stats: bool):
        variables = {"params": d_params, "batch_stats": d_stats}
        if not update_stats:
            return self.disc.apply(variables, x, update_stats=False), d_stats
        logits, upd = self.disc.apply(variables, x, update_stats=True, mutable=["batch_stats"])
        return logits, upd["batch_stats"]

    def generator_loss(self, params, state, lr, hr, lsh_rng):
        sr = precision.apply(self.model, params, lr, self.compute_dtype,
                             self.matmul_precision, train=True, rngs={"lsh": lsh_rng})
        l_pix = objectives.pixel_loss(self.config.train.loss, sr, hr)
        l_percep = vgg_lib.perceptual_loss(self.vgg, state["vgg_params"], sr, hr,
                                           self.layer_weights, self.compute_dtype)
        fake_logits, _ = self.d_logits(state["disc_params"], state["disc_stats"], sr, False)
        l_gan = bce_with_logits(fake_logits, real=True)
        total = self.w_pix * l_pix + self.w_percep * l_percep + self.w_gan * l_gan
        return total, (sr, {"l_pix": l_pix, "l_percep": l_percep, "l_g_gan": l_gan})

    def discriminator_loss(self, d_params, d_stats, hr, sr):
        n = hr.shape[0]
        both = jnp.concatenate([hr, jax.lax.stop_gradient(sr)], axis=0)
        logits, new_stats = self.d_logits(d_params, d_stats, both, True)
        l_real = bce_with_logits(logits[:n], real=True)
        l_fake = bce_with_logits(logits[n:], real=False)
        aux = {"l_d_real": l_real, "l_d_fake": l_fake,
               "d_real_logit": jnp.mean(logits[:n]), "d_fake_logit": jnp.mean(logits[n:])}
        return l_real + l_fake, (new_stats, aux)

    # ------------------------------------------------------------------ step

    def train_step(self, state, hr_uint8, rng):
        deg_rng, lsh_rng = jax.random.split(rng)
        hr, lr = self.synthesize(hr_uint8, deg_rng)

        (g_loss, (sr, g_aux)), g_grads = jax.value_and_grad(self.generator_loss, has_aux=True)(
            state["params"], state, lr, hr, lsh_rng)
        g_upd, g_opt = self.tx.update(g_grads, state["opt_state"], state["params"])
        g_params = optax.apply_updates(state["params"], g_upd)

        (d_loss, (d_stats, d_aux)), d_grads = jax.value_and_grad(
            self.discriminator_loss, has_aux=True)(state["disc_params"], state["disc_stats"],
                                                   hr, sr)
        d_upd, d_opt = self.tx_d.update(d_grads, state["disc_opt_state"], state["disc_params"])
        d_params = optax.apply_updates(state["disc_params"], d_upd)

        ok = objectives.all_finite(g_loss, g_grads, d_loss, d_grads)
        keys = ("params", "opt_state", "disc_params", "disc_stats", "disc_opt_state")
        new = objectives.keep_if(ok, dict(zip(keys, (g_params, g_opt, d_params, d_stats, d_opt))),
                                 {k: state[k] for k in keys})
        new["vgg_params"] = state["vgg_params"]
        new["step"] = state["step"] + 1
        metrics = {"loss": g_loss, "l_d": d_loss, **g_aux, **d_aux,
                   "grad_norm": optax.tree.norm(g_grads),
                   "d_grad_norm": optax.tree.norm(d_grads),
                   "finite": ok, "lr": self.schedule(state["step"])}
        return new, metrics


def make(config, model):
    if objectives.grad_accum_steps(config.train) > 1:
        # D's spectral-norm statistics and its update depend on the whole batch of SR
        # outputs after G's update: splitting that needs its own design.
        raise ValueError(f"config.train.grad_accum_steps={config.train.grad_accum_steps}: "
                         "objective 'gan' does not accumulate gradients; use "
                         "grad_accum_steps=1 with a batch that fits (or per_device_batch_size)")
    for section in ("loss", "discriminator"):
        if section not in config:
            raise ValueError(f"config.train.objective='gan' needs config.{section} "
                             "(see configs/nlcunet_gan.py)")
    if not config.get("init_from", ""):
        logging.warning("config.init_from is empty: the GAN stage starts from a random "
                        "generator unless the workdir has a checkpoint to resume (NLCUnetGAN "
                        "starts from the PSNR-stage model).")
    return GANObjective(config, model)
