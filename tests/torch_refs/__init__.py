"""Independent PyTorch reference implementations used by the parity tests.

Written from /work/shared/spec/architectures.md (the official EDSR-PyTorch / NLSN / DLSN
module trees and forward passes; RCAN and FSRCNN from their well-known PyTorch layouts), not
derived from the JAX code; nlcunet.py and usrnet.py come from the helpers of those models. Module and parameter names
reproduce the official classes so their state_dicts have the official keys. The only
deliberate differences from the official code (both from the spec's parity checklist,
section 10): the hash sort is stable, and hash rotations can be injected per layer.
"""
