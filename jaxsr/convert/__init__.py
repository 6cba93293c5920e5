"""PyTorch checkpoint conversion, both ways, strict (`python -m jaxsr.convert --help`).

Library:
    from jaxsr import convert
    sd = convert.params_to_state_dict(params, config)           # official torch key names
    params, warnings = convert.state_dict_to_params(sd, config)  # strict, lists every problem
    sd = convert.load_state_dict("model.pth")                    # needs torch (optional extra)

Each architecture is one `Table` in `tables.py`; `core.py` is architecture-agnostic.
torch is imported lazily (only to read/write files), so this package imports without it.
"""
from jaxsr.convert.api import (abstract_params, check_params, export_workdir,
                               guess_architectures, import_file, params_to_state_dict,
                               state_dict_to_params, table_for)
from jaxsr.convert.core import Const, ConversionError, Leaf, Probe, Rule, Table
from jaxsr.convert.tables import TABLES
from jaxsr.convert.torchio import load_state_dict, save_state_dict

__all__ = [
    "abstract_params", "check_params", "export_workdir", "guess_architectures", "import_file",
    "params_to_state_dict", "state_dict_to_params", "table_for", "Const", "ConversionError",
    "Leaf", "Probe", "Rule", "Table", "TABLES", "load_state_dict", "save_state_dict",
]
