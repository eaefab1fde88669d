"""Hand-written CPU kernels for what runtimes do in several passes (see ``cheap_cat``)."""

from .fused_cheap import CheapCat, GhostConvKernel, cheap_cat, fuse_cheap_ops, load_extension

__all__ = ["CheapCat", "GhostConvKernel", "cheap_cat", "fuse_cheap_ops", "load_extension"]
