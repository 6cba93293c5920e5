"""Every config file loads (default arg and, where it has one, ':small') and documents
its launch command; configs that build on another config file (sibling_config) pick up
that file's fields."""
import glob
import os

import pytest

from jaxsr import config_util

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
SMALL_ARG = {"degradations.py": "bd,small"}     # that file needs a preset name too


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads_and_documents_its_launch_command(path):
    text = open(path).read()
    assert "python -m jaxsr" in text.split('"""')[1], f"{path}: no launch command in docstring"
    c = config_util.load_config_file(path)
    assert c.model.name and int(c.scale) >= 1
    if "small" in text:
        arg = SMALL_ARG.get(os.path.basename(path), "small")
        small = config_util.load_config_file(f"{path}:{arg}")
        assert small.train.batch_size <= c.train.batch_size


def test_configs_built_on_other_configs():
    usrnet = config_util.load_config_file(
        os.path.join(REPO, "configs/kenet_usrnet.py:x4,train_usrnet"))
    assert usrnet.model.name == "usrnet" and usrnet.degradation.name == "kair"
    assert usrnet.scale == 4                                     # from configs/kenet.py:x4
    gan = config_util.load_config_file(os.path.join(REPO, "configs/nlcunet_gan.py"))
    psnr = config_util.load_config_file(os.path.join(REPO, "configs/nlcunet.py"))
    assert gan.model.to_dict() == psnr.model.to_dict()
    assert gan.train.objective != psnr.train.objective
