"""Low-level operations: ``fast_conv`` (2-D convolution formulations -- XLA's conv, im2col + matmul,
1x1 as matmul -- and the rule that picks one per shape, because XLA:CPU is slow on a few conv
shapes), ``conv_grad`` (a custom VJP whose weight gradient uses the formulation that is fast for
the shape: chunked im2col or matmul instead of XLA:CPU's slow weight-gradient conv),
``conv_geometry`` (padding, output sizes and shifted views they share) and ``pooling`` (2x2 max
pooling whose gradient XLA:CPU runs fast). The lowest layer: imports jax and flax only
(``fast_conv.Conv`` is a Flax module), nothing of the package outside ``ops``.
"""
