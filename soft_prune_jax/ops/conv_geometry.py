"""Shape arithmetic shared by the conv formulations: strides and padding normalised, output sizes,
and the kh*kw shifted (strided) views of a padded input that im2col-style formulations stack."""

from __future__ import annotations

from typing import Sequence, Union

import jax.numpy as jnp
from jax import lax

Padding = Union[str, Sequence[tuple[int, int]]]


def pair(value, name: str) -> tuple[int, int]:
    """An int or a pair of ints >= 1 as a pair (e.g. strides); a one-line error naming ``name`` otherwise."""
    if isinstance(value, int):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) and v >= 1 for v in value):
        raise ValueError(f"{name}={value!r} is invalid: expected an int >= 1 or a pair of them")
    return value


def explicit_padding(
    spatial: Sequence[int], window: Sequence[int], strides: Sequence[int], padding: Padding
) -> tuple[tuple[int, int], ...]:
    """'SAME'/'VALID' or explicit ((lo, hi), (lo, hi)) as explicit pads for these sizes."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"padding={padding!r} is invalid: expected 'SAME', 'VALID' or ((lo, hi), (lo, hi))")
        return tuple(lax.padtype_to_pads(tuple(spatial), tuple(window), tuple(strides), padding.upper()))
    pads = tuple(tuple(p) for p in padding)
    if len(pads) != 2 or not all(len(p) == 2 and all(isinstance(v, int) and v >= 0 for v in p) for p in pads):
        raise ValueError(f"padding={padding!r} is invalid: expected 'SAME', 'VALID' or ((lo, hi), (lo, hi)) ints >= 0")
    return pads


def output_spatial(
    spatial: Sequence[int], window: Sequence[int], strides: Sequence[int], pads: Sequence[tuple[int, int]]
) -> tuple[int, ...]:
    """Output height/width of a conv with explicit padding (0 when the window does not fit)."""
    return tuple(max((d + lo + hi - k) // s + 1, 0) for d, k, s, (lo, hi) in zip(spatial, window, strides, pads))


def shifted_views(x, window, strides, pads, out_hw):
    """The kh*kw strided views x_pad[:, i::sh, j::sw, :] cropped to the output size, (i, j) row-major."""
    xp = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    (sh, sw), (ho, wo) = strides, out_hw
    return [
        lax.slice(
            xp, (0, i, j, 0), (xp.shape[0], i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, xp.shape[3]), (1, sh, sw, 1)
        )
        for i in range(window[0])
        for j in range(window[1])
    ]
