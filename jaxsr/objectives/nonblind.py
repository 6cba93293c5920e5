"""Non-blind SR training (USRNet): the model is told the true kernel and noise level.

Each HR crop gets its own kernel and noise level from `config.degradation` (e.g. the
'kenet' or 'kair' preset: true convolution, upper-left decimation, noise), drawn on the
device; the model gets `kernel=[B, k, k]` and `sigma=[B]` (noise std on the [0, 1] scale)
with the LR, and the loss is the config's pixel loss, as KAIR's USRNet training (L1).
"""
import jax.numpy as jnp

from jaxsr import objectives
from jaxsr.data import degradations
from jaxsr.objectives.sr import SRObjective


class NonBlindObjective(SRObjective):
    def __init__(self, config, model):
        super().__init__(config, model)
        self.spec = degradations.resolve(config)
        if self.spec.kernel == "none":
            raise ValueError(f"config.train.objective='nonblind' needs a blur kernel, but "
                             f"config.degradation (preset {config.degradation.name!r}) has none; "
                             "use e.g. --config.degradation.name=kenet or kair")

    def degrade(self, hr_uint8, rng):
        hr = objectives.hr_to_float(objectives.synthesised_only(hr_uint8, "nonblind"))
        lr_hw = (hr.shape[1] // self.spec.scale, hr.shape[2] // self.spec.scale)
        p = degradations.sample_params(rng, self.spec, hr.shape[0], lr_hw)
        lr = degradations.apply_degradation(hr * 255.0, p, self.spec) / 255.0
        sigma = p.get("noise_level", jnp.zeros((hr.shape[0],), jnp.float32)) / 255.0
        return hr, lr, {"kernel": p["kernel"], "sigma": sigma}


def make(config, model):
    return NonBlindObjective(config, model)
