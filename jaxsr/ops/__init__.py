"""Array ops: MATLAB-exact bicubic resize."""
from jaxsr.ops.imresize import imresize, imresize_jit, imresize_np

__all__ = ["imresize", "imresize_jit", "imresize_np"]
