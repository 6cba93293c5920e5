"""USRNet trains non-blind through the objective interface (objective 'nonblind')."""
import os

import jax
import numpy as np
import pytest

from jaxsr import config_util, objectives
from jaxsr.models import build_model
from tests.fast_compile import jit as fast_jit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def usrnet_config():
    c = config_util.load_config_file(os.path.join(REPO, "configs/kenet_usrnet.py:x2,small,train_usrnet"))
    c.train.batch_size, c.train.patch_size = 2, 32
    return c


def test_usrnet_step_uses_true_kernels_and_learns():
    c = usrnet_config()
    obj = objectives.make(c, build_model(c))
    hr = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    hr_f, lr, inputs = fast_jit(obj.degrade)(hr, jax.random.PRNGKey(3))
    assert lr.shape == (2, 16, 16, 3) and inputs["kernel"].shape[0] == 2
    np.testing.assert_allclose(np.asarray(inputs["kernel"]).sum(axis=(1, 2)), 1.0, rtol=1e-5)
    state = fast_jit(obj.init_state)(jax.random.PRNGKey(0), hr)
    step = fast_jit(obj.train_step)
    losses = []
    for i in range(3):
        state, m = step(state, hr, jax.random.PRNGKey(1))     # same batch and kernels
        losses.append(float(m["loss"]))
    assert bool(m["finite"]) and int(state["step"]) == 3
    assert losses[-1] < losses[0]


def test_nonblind_needs_a_kernel_preset():
    c = usrnet_config()
    c.degradation.name = "bicubic"
    with pytest.raises(ValueError, match="needs a blur kernel"):
        objectives.make(c, build_model(c))
