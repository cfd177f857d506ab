"""Low-level operations: ``fast_conv`` (2-D convolution formulations -- XLA's conv, im2col + matmul,
1x1 as matmul -- and the rule that picks one per shape, because XLA:CPU is slow on a few conv
shapes). The lowest layer: imports jax and numpy only, nothing of the package.
"""
