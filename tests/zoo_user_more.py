"""More user-style models for prune_model (tests/test_prune_zoo.py), written after the first zoo
(tests/zoo_user.py) had passed, as a user would bring them: the blocks of published architectures
(ConvNeXt, MobileNetV2, ShuffleNetV2, GhostNet, RepVGG, ResNeXt, EfficientNet, Res2Net, HRNet,
U-Net, DeepLab's ASPP), and the ways such code is written (einsum with a PyTorch-layout kernel,
explicit and reflect/circular padding with VALID convs, NCHW throughout with BatchNorm(axis=1),
weight-standardised kernels, nested dict/list outputs, a ``train`` flag driving Dropout and BN, a
remat'd block with a static flag, ``setup``-style modules, ``nnx.Sequential``).

Same format as ``zoo_user``: ``LINEN`` is name -> (body, call args after x, expects a cut) and
``NNX`` is name -> (constructor(rngs), call args after x, expects a cut); ``LINEN_MODULES`` holds
models that are linen classes of their own, ``KWARGS`` call keyword arguments. ``WHOLE`` and
``PRUNABLE`` pin, per model, which units' groups the cut leaves whole (and why) and which it may
cut. Every model takes ``(2, 8, 8, 4)`` NHWC images.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from zoo_user import Kernel, bn, cbr, head, shuffle

SHAPE = (2, 8, 8, 4)


class Vector(nn.Module):
    """A bare per-channel weight (a layer scale, a hand-written bias)."""

    size: int

    @nn.compact
    def __call__(self):
        return self.param("vector", nn.initializers.ones, (self.size,))


def dwconv(x, k=3, stride=1, dilation=1):
    c = x.shape[-1]
    return nn.Conv(c, (k, k), (stride, stride), kernel_dilation=dilation, feature_group_count=c, use_bias=False)(x)


def conv1(x, c):
    return nn.Conv(c, (1, 1), use_bias=False)(x)


# ---- published blocks -------------------------------------------------------------------------


def _convnext_bn(x):
    """ConvNeXt block with BN for LN and ReLU for GELU (as BN-ConvNeXt variants do), layer scale."""
    h = cbr(x, 8)
    y = bn(dwconv(h, 7))
    y = conv1(nn.relu(bn(conv1(y, 16))), 8)
    gamma = Vector(8)()
    return head(cbr(h + gamma * y, 5))


def _convnext_ln(x):
    """The original ConvNeXt block: depthwise 7x7 -> LayerNorm -> 1x1 expand -> GELU -> 1x1."""
    h = nn.Conv(8, (3, 3))(x)
    y = nn.LayerNorm()(dwconv(h, 7))
    y = nn.Dense(8)(nn.gelu(nn.Dense(16)(y)))
    return head(h + y)


def _inverted_residual(x, expand=4, stride=1):
    """MobileNetV2: 1x1 expand -> BN -> ReLU6 -> depthwise 3x3 -> BN -> ReLU6 -> 1x1 -> BN (linear)."""
    h = cbr(x, 6)
    y = cbr(h, 6 * expand, k=1, act=nn.relu6)
    y = nn.relu6(bn(dwconv(y, 3, stride)))
    y = bn(conv1(y, 6))
    out = h + y if stride == 1 else y
    return head(out)


def _shufflenet_v2_down(x):
    """ShuffleNetV2 stride-2 unit (both branches on the full input) then a basic unit with a split."""
    h = cbr(x, 8)
    left = cbr(bn(dwconv(h, 3, 2)), 4, k=1)
    right = cbr(bn(dwconv(cbr(h, 4, k=1), 3, 2)), 4, k=1)
    h = shuffle(jnp.concatenate([left, right], -1), 2)
    a, b = jnp.split(h, 2, -1)
    b = cbr(bn(dwconv(cbr(b, 4, k=1))), 4, k=1)
    return head(shuffle(jnp.concatenate([a, b], -1), 2))


def _ghost(x, out, ratio=2):
    """GhostNet's module: a primary 1x1 conv and cheap depthwise 'ghost' features, concatenated and
    sliced to ``out`` channels."""
    primary = cbr(x, -(-out // ratio), k=1)
    cheap = nn.relu(bn(dwconv(primary)))
    return jnp.concatenate([primary, cheap], -1)[..., :out]


def _repvgg(x):
    """RepVGG training-time block: 3x3 conv-BN + 1x1 conv-BN + identity BN, summed, then ReLU."""
    h = cbr(x, 6)
    y = nn.relu(bn(nn.Conv(6, (3, 3), use_bias=False)(h)) + bn(conv1(h, 6)) + bn(h))
    return head(cbr(y, 5))


def _resnext(x, cardinality=4):
    """ResNeXt bottleneck: 1x1 -> grouped 3x3 -> 1x1, projection-free identity shortcut."""
    h = cbr(x, 8)
    y = cbr(h, 8, k=1)
    y = nn.relu(bn(nn.Conv(8, (3, 3), feature_group_count=cardinality, use_bias=False)(y)))
    y = bn(conv1(y, 8))
    return head(nn.relu(h + y))


def _se(x, act=nn.relu, gate=nn.sigmoid):
    c = x.shape[-1]
    s = act(nn.Conv(max(1, c // 4), (1, 1))(x.mean((1, 2), keepdims=True)))
    return x * gate(nn.Conv(c, (1, 1))(s))


def _mbconv(x, act):
    """EfficientNet MBConv: expand, depthwise, SE (1x1 convs on the pooled map), project, skip."""
    h = cbr(x, 6, act=act)
    y = cbr(h, 24, k=1, act=act)
    y = _se(act(bn(dwconv(y))), act=act)
    return head(h + bn(conv1(y, 6)))


def _res2net(x, scale=4):
    """Res2Net: a 1x1 conv's output split into ``scale`` chunks, each later chunk added to the
    previous chunk's 3x3 output before its own 3x3 (hierarchical residual), concatenated, 1x1."""
    h = cbr(x, 8)
    xs = jnp.split(cbr(h, 4 * scale, k=1), scale, -1)
    ys, prev = [xs[0]], None
    for part in xs[1:]:
        prev = cbr(part if prev is None else part + prev, 4)
        ys.append(prev)
    y = bn(conv1(jnp.concatenate(ys, -1), 8))
    return head(nn.relu(h + y))


def _hrnet_fuse(x, method):
    """HRNet-like exchange: a full- and a half-resolution branch, each fused into the other (the low
    one upsampled with jax.image.resize after a 1x1 conv, the high one by a strided conv)."""
    high = cbr(x, 6)
    low = cbr(high, 8)
    low = nn.relu(bn(nn.Conv(8, (3, 3), (2, 2), use_bias=False)(low)))
    up = bn(conv1(low, 6))
    up = jax.image.resize(up, up.shape[:1] + high.shape[1:3] + up.shape[3:], method)
    down = bn(nn.Conv(8, (3, 3), (2, 2), use_bias=False)(high))
    fused_high, fused_low = nn.relu(high + up), nn.relu(low + down)
    return head(cbr(fused_high, 5)) + head(cbr(fused_low, 5))


def _unet(x):
    """U-Net: encoder, max-pool, bottleneck, transposed-conv upsampling, skip concatenation."""
    skip = cbr(cbr(x, 6), 6)
    mid = cbr(nn.max_pool(skip, (2, 2), (2, 2)), 8)
    up = nn.ConvTranspose(6, (2, 2), (2, 2))(mid)
    return head(cbr(jnp.concatenate([skip, up], -1), 5))


def _aspp(x):
    """DeepLab's ASPP: parallel dilated 3x3 branches, a 1x1 branch and an image-pooling branch
    broadcast back to the map, concatenated, then a 1x1 conv-BN-ReLU."""
    h = cbr(x, 6)
    branches = [cbr(h, 4, k=1)]
    for rate in (2, 3):
        branches.append(nn.relu(bn(nn.Conv(4, (3, 3), kernel_dilation=rate, use_bias=False)(h))))
    pooled = nn.relu(bn(conv1(h.mean((1, 2), keepdims=True), 4)))
    branches.append(jnp.broadcast_to(pooled, h.shape[:3] + (4,)))
    return head(cbr(jnp.concatenate(branches, -1), 5, k=1))


# ---- ways of writing layers -------------------------------------------------------------------


def _einsum_torch_kernel(x):
    """A 1x1 conv as einsum with a PyTorch-layout (out, in) kernel and a bias, then BN-ReLU."""
    u = cbr(x, 6)
    y = jnp.einsum("nhwc,dc->nhwd", u, Kernel((5, 6))()) + Vector(5)()
    return head(cbr(nn.relu(bn(y)), 4))


def _einsum_gate(x):
    """SE gating written as einsum('nhwc,nc->nhwc')."""
    u = cbr(x, 6)
    gate = nn.sigmoid(nn.Dense(6)(nn.relu(nn.Dense(3)(u.mean((1, 2))))))
    return head(cbr(jnp.einsum("nhwc,nc->nhwc", u, gate), 5))


def _pad_valid(x, mode):
    """Explicit spatial padding then a VALID conv (the PyTorch-port idiom)."""
    u = cbr(x, 6)
    u = jnp.pad(u, ((0, 0), (1, 1), (1, 1), (0, 0)), mode=mode)
    return head(nn.relu(bn(nn.Conv(5, (3, 3), padding="VALID", use_bias=False)(u))))


def _circular(x):
    u = cbr(x, 6)
    return head(nn.relu(bn(nn.Conv(5, (3, 3), padding="CIRCULAR", use_bias=False)(u))))


def _nchw_net(x):
    """PyTorch-style NCHW throughout: lax convs, BatchNorm(axis=1), max-pool on NCHW, flatten."""
    h = x.transpose(0, 3, 1, 2)
    for c in (6, 5):
        w = Kernel((c, h.shape[1], 3, 3))()  # OIHW, as torch stores it
        h = jax.lax.conv_general_dilated(h, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
        h = nn.relu(nn.BatchNorm(use_running_average=True, axis=1)(h))
        h = nn.max_pool(h.transpose(0, 2, 3, 1), (2, 2), (2, 2)).transpose(0, 3, 1, 2)
    return nn.Dense(3)(h.reshape(h.shape[0], -1))


def _weight_standardized(x):
    """Weight-standardised conv (BiT): the kernel is normalised per output channel over its input
    channels and taps -- a variable-only reduction over the channels the previous layer loses."""
    u = cbr(x, 6)
    w = Kernel((3, 3, 6, 5))()
    w = (w - w.mean((0, 1, 2))) / jnp.sqrt(w.var((0, 1, 2)) + 1e-5)
    y = jax.lax.conv_general_dilated(u, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return head(nn.relu(bn(y)))


def _nested_outputs(x):
    """Nested dict/list outputs; one output is a unit's map itself (that unit keeps its channels)."""
    a = cbr(x, 6)
    b = cbr(a, 5)
    c = cbr(b, 4)
    return {"main": head(c), "aux": [b.mean((1, 2)), {"map": c}], "logits2": nn.Dense(2)(b.max((1, 2)))}


def _pool_concat_head(x):
    """Global average and max pooling concatenated before the classifier."""
    h = cbr(cbr(x, 6), 5)
    return nn.Dense(3)(jnp.concatenate([h.mean((1, 2)), h.max((1, 2))], -1))


def _split_joins_earlier_unit(x):
    """Half of a unit's channels added to an earlier unit, the other half read on its own."""
    u = cbr(x, 4)
    a, b = jnp.split(cbr(x, 8), 2, -1)
    return head(nn.Conv(5, (3, 3))(u + a) + nn.Conv(5, (1, 1))(b))


class DropoutNet(nn.Module):
    """A ``train`` flag driving Dropout(deterministic) and BatchNorm(use_running_average), and a
    stochastic-depth skip, the way linen examples write it."""

    @nn.compact
    def __call__(self, x, train: bool = True):
        def unit(h, c):
            h = nn.Conv(c, (3, 3), use_bias=False)(h)
            return nn.relu(nn.BatchNorm(use_running_average=not train)(h))

        h = unit(x, 6)
        h = nn.Dropout(0.3, deterministic=not train)(h)
        y = unit(unit(h, 5), 6)
        keep = nn.Dropout(0.2, broadcast_dims=(1, 2, 3), deterministic=not train)(jnp.ones_like(y))
        return nn.Dense(3)(nn.Dropout(0.5)((h + y * keep).mean((1, 2)), deterministic=not train))


class RematNet(nn.Module):
    """A remat'd block taking a static flag (``static_argnums``)."""

    @nn.compact
    def __call__(self, x, wide: bool = True):
        class Block(nn.Module):
            @nn.compact
            def __call__(self, h, wide):
                return cbr(cbr(h, 8 if wide else 4), 5)

        return head(nn.remat(Block, static_argnums=(2,))()(cbr(x, 6), wide))


class SetupNet(nn.Module):
    """``setup``-style: submodules in lists, a shared BN-free head, widths from attributes."""

    widths: Sequence[int] = (6, 5, 7)

    def setup(self):
        self.convs = [nn.Conv(c, (3, 3), use_bias=False) for c in self.widths]
        self.norms = [nn.BatchNorm(use_running_average=True) for _ in self.widths]
        self.out = nn.Dense(3)

    def __call__(self, x):
        for conv, norm in zip(self.convs, self.norms):
            x = nn.relu(norm(conv(x)))
        return self.out(x.mean((1, 2)))


LINEN: dict[str, tuple[Callable, tuple, bool]] = {
    "convnext_bn": (_convnext_bn, (), True),
    "convnext_ln": (_convnext_ln, (), False),
    "mobilenetv2_block": (lambda x: _inverted_residual(x), (), True),
    "mobilenetv2_stride2": (lambda x: _inverted_residual(x, stride=2), (), True),
    "shufflenet_v2_down": (_shufflenet_v2_down, (), True),
    "ghost_module": (lambda x: head(cbr(_ghost(cbr(x, 6), 8), 5)), (), True),
    "ghost_module_sliced": (lambda x: head(cbr(_ghost(cbr(x, 6), 7), 5)), (), True),
    "repvgg_block": (_repvgg, (), True),
    "resnext_block": (_resnext, (), True),
    "mbconv_swish": (lambda x: _mbconv(x, nn.swish), (), False),
    "mbconv_relu": (lambda x: _mbconv(x, nn.relu), (), True),
    "res2net_block": (_res2net, (), True),
    "hrnet_fuse_bilinear": (lambda x: _hrnet_fuse(x, "bilinear"), (), True),
    "hrnet_fuse_nearest": (lambda x: _hrnet_fuse(x, "nearest"), (), True),
    "unet": (_unet, (), True),
    "aspp": (_aspp, (), True),
    "einsum_torch_kernel": (_einsum_torch_kernel, (), True),
    "einsum_gate": (_einsum_gate, (), True),
    "pad_valid_zeros": (lambda x: _pad_valid(x, "constant"), (), True),
    "pad_valid_reflect": (lambda x: _pad_valid(x, "reflect"), (), True),
    "pad_valid_edge": (lambda x: _pad_valid(x, "edge"), (), True),
    "circular_conv": (_circular, (), True),
    "nchw_net": (_nchw_net, (), True),
    "weight_standardized": (_weight_standardized, (), True),
    "nested_outputs": (_nested_outputs, (), True),
    "pool_concat_head": (_pool_concat_head, (), True),
    "split_joins_earlier_unit": (_split_joins_earlier_unit, (), True),
}
# Models that are their own linen class (not a body): name -> (class instance, call args, expects a cut).
LINEN_MODULES: dict[str, tuple[Any, tuple, bool]] = {
    "dropout_train_flag": (DropoutNet(), (), True),
    "remat_static_flag": (RematNet(), (True,), True),
    "setup_lists": (SetupNet(), (), True),
}
KWARGS = {"dropout_train_flag": {"train": False}}


# ---- NNX --------------------------------------------------------------------------------------


class NnxInvertedResidual(nnx.Module):
    def __init__(self, c, expand, rngs):
        mid = c * expand
        self.stem = nnx.Sequential(nnx.Conv(4, c, (3, 3), use_bias=False, rngs=rngs), nnx.BatchNorm(c, rngs=rngs))
        self.expand = nnx.Conv(c, mid, (1, 1), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(mid, rngs=rngs)
        self.dw = nnx.Conv(mid, mid, (3, 3), feature_group_count=mid, use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(mid, rngs=rngs)
        self.project = nnx.Conv(mid, c, (1, 1), use_bias=False, rngs=rngs)
        self.bn3 = nnx.BatchNorm(c, rngs=rngs)
        self.head = nnx.Linear(c, 3, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.stem(x))
        y = nnx.relu6(self.bn1(self.expand(h)))
        y = nnx.relu6(self.bn2(self.dw(y)))
        return self.head((h + self.bn3(self.project(y))).mean((1, 2)))


class NnxBasicBlock(nnx.Module):
    """torchvision-style ResNet basic block with a strided projection shortcut."""

    def __init__(self, rngs):
        self.conv1 = nnx.Conv(4, 6, (3, 3), strides=2, use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(6, rngs=rngs)
        self.conv2 = nnx.Conv(6, 6, (3, 3), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(6, rngs=rngs)
        self.down = nnx.Conv(4, 6, (1, 1), strides=2, use_bias=False, rngs=rngs)
        self.bn_down = nnx.BatchNorm(6, rngs=rngs)
        self.fc = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
        y = self.bn2(self.conv2(nnx.relu(self.bn1(self.conv1(x)))))
        return self.fc(nnx.relu(y + self.bn_down(self.down(x))).mean((1, 2)))


class NnxDropoutNet(nnx.Module):
    """Dropout and BN switched by ``deterministic`` / ``use_running_average`` call arguments."""

    def __init__(self, rngs):
        self.conv1 = nnx.Conv(4, 6, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(6, rngs=rngs)
        self.drop = nnx.Dropout(0.4, rngs=rngs)
        self.conv2 = nnx.Conv(6, 5, (3, 3), rngs=rngs)
        self.bn2 = nnx.BatchNorm(5, rngs=rngs)
        self.fc = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x, deterministic=True):
        h = self.drop(nnx.relu(self.bn1(self.conv1(x), use_running_average=True)), deterministic=deterministic)
        h = nnx.relu(self.bn2(self.conv2(h), use_running_average=True))
        return self.fc(h.mean((1, 2)))


def _sequential(rngs):
    return nnx.Sequential(
        nnx.Conv(4, 6, (3, 3), use_bias=False, rngs=rngs),
        nnx.BatchNorm(6, rngs=rngs),
        nnx.relu,
        nnx.Conv(6, 8, (3, 3), strides=2, use_bias=False, rngs=rngs),
        nnx.BatchNorm(8, rngs=rngs),
        nnx.relu,
        lambda h: h.reshape(h.shape[0], -1),
        nnx.Linear(4 * 4 * 8, 3, rngs=rngs),
    )


class NnxUNet(nnx.Module):
    def __init__(self, rngs):
        self.enc = nnx.Sequential(nnx.Conv(4, 6, (3, 3), rngs=rngs), nnx.BatchNorm(6, rngs=rngs), nnx.relu)
        self.mid = nnx.Sequential(nnx.Conv(6, 8, (3, 3), rngs=rngs), nnx.BatchNorm(8, rngs=rngs), nnx.relu)
        self.up = nnx.ConvTranspose(8, 6, (2, 2), strides=(2, 2), rngs=rngs)
        self.dec = nnx.Sequential(nnx.Conv(12, 5, (3, 3), rngs=rngs), nnx.BatchNorm(5, rngs=rngs), nnx.relu)
        self.fc = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
        skip = self.enc(x)
        up = self.up(self.mid(nnx.max_pool(skip, (2, 2), (2, 2))))
        return self.fc(self.dec(jnp.concatenate([skip, up], -1)).mean((1, 2)))


class NnxGhost(nnx.Module):
    def __init__(self, rngs):
        self.stem = nnx.Conv(4, 6, (3, 3), rngs=rngs)
        self.primary = nnx.Conv(6, 4, (1, 1), use_bias=False, rngs=rngs)
        self.bn_p = nnx.BatchNorm(4, rngs=rngs)
        self.cheap = nnx.Conv(4, 4, (3, 3), feature_group_count=4, use_bias=False, rngs=rngs)
        self.bn_c = nnx.BatchNorm(4, rngs=rngs)
        self.fc = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        p = nnx.relu(self.bn_p(self.primary(self.stem(x))))
        return self.fc(jnp.concatenate([p, nnx.relu(self.bn_c(self.cheap(p)))], -1).mean((1, 2)))


NNX: dict[str, tuple[Callable, tuple, bool]] = {
    "nnx_inverted_residual": (lambda r: NnxInvertedResidual(6, 3, r), (), True),
    "nnx_basic_block_projection": (NnxBasicBlock, (), True),
    "nnx_dropout_deterministic": (NnxDropoutNet, (True,), True),
    "nnx_sequential": (_sequential, (), True),
    "nnx_unet": (NnxUNet, (), True),
    "nnx_ghost": (NnxGhost, (), True),
}

# Per model: units whose groups must be left whole, with words of the reason the cut must give
# (docs/method.md section 10 says why each is right) ...
SHARED = "shared by several readers"  # a residual stream: each reader selects its own channels
NOT_ZERO = "not zero where the group drops"  # depthwise -> BN without ReLU -> conv: a dead channel is BN's bias
SPLIT = "split over several groups"  # jnp.split / a shuffle send one unit's channels different ways
CONCAT = "not zero where it drops"  # concatenated with a non-zero map (zeros are tracked per value)
WHOLE: dict[str, dict[str, str]] = {
    "convnext_bn": {"BatchNorm_0": NOT_ZERO},
    "mobilenetv2_block": {"BatchNorm_0": SHARED},
    "shufflenet_v2_down": {
        "BatchNorm_0": NOT_ZERO,
        "BatchNorm_2": SPLIT,
        "BatchNorm_3": NOT_ZERO,
        "BatchNorm_5": SPLIT,
        "BatchNorm_6": NOT_ZERO,
        "BatchNorm_8": SPLIT,
    },
    "repvgg_block": {"BatchNorm_0": SHARED},
    "resnext_block": {"BatchNorm_0": SHARED, "BatchNorm_1": "stopped by", "BatchNorm_2": "stopped by"},
    "mbconv_relu": {"BatchNorm_0": SHARED},
    "res2net_block": {"BatchNorm_0": SHARED, "BatchNorm_1": SPLIT, "BatchNorm_2": SPLIT, "BatchNorm_3": SPLIT},
    "hrnet_fuse_bilinear": {"BatchNorm_0": SHARED, "BatchNorm_2": SHARED},
    "hrnet_fuse_nearest": {"BatchNorm_0": "gather", "BatchNorm_2": SHARED},
    "unet": {"BatchNorm_1": CONCAT},
    "nested_outputs": {"BatchNorm_1": "model's output", "BatchNorm_2": "model's output"},
    "split_joins_earlier_unit": {"BatchNorm_0": SPLIT, "BatchNorm_1": SPLIT},
    "nnx_inverted_residual": {"stem/layers/1": SHARED},
    "nnx_unet": {"enc/layers/1": CONCAT},
}
# ... and units whose group must be prunable (the draw decides how much is cut).
_BN = [f"BatchNorm_{i}" for i in range(8)]
PRUNABLE: dict[str, list] = {
    "convnext_bn": ["BatchNorm_2", "BatchNorm_3"],
    "mobilenetv2_block": _BN[1:3],
    "mobilenetv2_stride2": _BN[:3],
    "ghost_module": _BN[:4],
    "ghost_module_sliced": _BN[:4],
    "repvgg_block": ["BatchNorm_4"],
    "mbconv_relu": _BN[1:3],
    "res2net_block": ["BatchNorm_4"],
    "hrnet_fuse_bilinear": ["BatchNorm_1", "BatchNorm_5", "BatchNorm_6"],
    "hrnet_fuse_nearest": ["BatchNorm_1", "BatchNorm_5", "BatchNorm_6"],
    "unet": ["BatchNorm_0", "BatchNorm_2", "BatchNorm_3"],
    "aspp": _BN[:6],
    "einsum_torch_kernel": _BN[:3],
    "einsum_gate": _BN[:2],
    "pad_valid_zeros": _BN[:2],
    "pad_valid_reflect": _BN[:2],
    "pad_valid_edge": _BN[:2],
    "circular_conv": _BN[:2],
    "nchw_net": _BN[:2],
    "weight_standardized": _BN[:2],
    "nested_outputs": ["BatchNorm_0"],
    "pool_concat_head": _BN[:2],
    "dropout_train_flag": _BN[:3],
    "remat_static_flag": ["BatchNorm_0", "CheckpointBlock_0/BatchNorm_0", "CheckpointBlock_0/BatchNorm_1"],
    "setup_lists": ["norms_0", "norms_1", "norms_2"],
    "nnx_inverted_residual": ["bn1", "bn2"],
    "nnx_basic_block_projection": ["bn1"],
    "nnx_dropout_deterministic": ["bn1", "bn2"],
    "nnx_sequential": ["layers/1", "layers/4"],
    "nnx_unet": ["mid/layers/1", "dec/layers/1"],
    "nnx_ghost": ["bn_p", "bn_c"],
}
