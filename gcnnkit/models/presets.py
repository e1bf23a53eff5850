"""Named architecture presets, buildable by name on any backend and group (like timm's models).

A preset is a function of the input image size and channel count returning a layer spec
(see :mod:`gcnnkit.models.spec`) and the width mode it is written in. Presets in ``params`` width
mode give CNN channel counts; on a group ``G`` they get ``out/√|G|`` fields, so the same
preset on ``C1`` is the parameter-matched CNN baseline of the G-CNN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gcnnkit.core.errors import SpecError


@dataclass(frozen=True)
class Preset:
    """A named architecture: ``layers(image_size, in_channels)`` → spec list, and its width mode.

    Presets that reproduce a published network also say where it comes from: ``group`` (the
    group it was published on, ``C1`` for a CNN), ``image_size`` (the input it was published
    for), ``reference`` and ``published_params`` (its parameter count as published, when the
    source gives one; tests check that gcnnkit builds exactly that many).
    """

    name: str
    description: str
    layers: Callable[[int, int], list[Any]]
    widths: str = "params"
    group: str | None = None
    image_size: int | None = None
    reference: str = ""
    published_params: int | None = None


PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    """Add a preset to :data:`PRESETS` (names are unique)."""
    if preset.name in PRESETS:
        raise ValueError(f"preset {preset.name!r} is already registered")
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> Preset:
    """The preset called ``name``; :class:`SpecError` lists the available ones."""
    if name not in PRESETS:
        raise SpecError(f"model.preset: unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def _pool(image_size: int) -> dict[str, Any]:
    """2×2/stride-2 max pooling for even sizes, 3×3/stride-2/pad-1 for odd sizes.

    Either way the pooling windows are placed symmetrically on the grid
    (``(size + 2·padding − kernel) % stride == 0``), which keeps rot90/flip equivariance exact.
    """
    if image_size % 2 == 0:
        return {"type": "pool", "mode": "max", "kernel": 2, "stride": 2, "padding": 0}
    return {"type": "pool", "mode": "max", "kernel": 3, "stride": 2, "padding": 1}


def _after_pool(size: int) -> int:
    return size // 2 if size % 2 == 0 else (size + 1) // 2


def _gcnn_small(image_size: int, in_channels: int) -> list[Any]:
    s1 = _after_pool(image_size)
    return [
        {"type": "lift", "out": 24, "kernel": 5},
        "batchnorm",
        "relu",
        {"type": "gconv", "out": 32, "kernel": 3},
        "batchnorm",
        "relu",
        _pool(image_size),
        {"type": "gconv", "out": 64, "kernel": 3},
        "batchnorm",
        "relu",
        _pool(s1),
        {"type": "gconv", "out": 64, "kernel": 3},
        "batchnorm",
        "relu",
        {"type": "group_pool", "mode": "max"},
        {"type": "global_pool", "mode": "avg"},
        {"type": "dropout", "p": 0.2},
        {"type": "linear", "out": "classes"},
    ]


def _gcnn_tiny(image_size: int, in_channels: int) -> list[Any]:
    return [
        {"type": "lift", "out": 8, "kernel": 3},
        "batchnorm",
        "relu",
        {"type": "gconv", "out": 8, "kernel": 3},
        "batchnorm",
        "relu",
        _pool(image_size),
        {"type": "group_pool", "mode": "max"},
        {"type": "global_pool", "mode": "avg"},
        {"type": "linear", "out": "classes"},
    ]


register_preset(
    Preset(
        "gcnn-small",
        "default: lift 5×5 + 3 group convs (CNN widths 24-32-64-64, ~63k parameters on every group), "
        "batch norm, ReLU, 2 max pools, max over the group, global average pool, linear head",
        _gcnn_small,
    )
)
register_preset(
    Preset(
        "gcnn-tiny",
        "smoke-test size: lift 3×3 + one group conv (CNN width 8), one pool, group and global pooling, linear",
        _gcnn_tiny,
    )
)


# ------------------------------------------------------------------------------------------
# Published architectures (see docs/results.md for what each reproduces and how it deviates)
# ------------------------------------------------------------------------------------------
def _uva_layers(bias: bool) -> Callable[[int, int], list[Any]]:
    """UvA DL course GDL notebook / R ``gcnn``: lift + 4 group convs, 5×5, no padding, layer norm
    without affine parameters over (C, |G|, H, W), ReLU, mean over group and space, linear head."""

    def layers(image_size: int, in_channels: int) -> list[Any]:
        conv = {"out": 32, "kernel": 5, "padding": 0, "bias": bias}  # CNN width 32 = 16 fields on C4
        norm = {"type": "layernorm", "affine": False}
        out: list[Any] = [{"type": "lift", **conv}, norm, "relu"]
        for _ in range(4):
            out += [{"type": "gconv", **conv}, norm, "relu"]
        return out + [
            {"type": "group_pool", "mode": "mean"},
            {"type": "global_pool", "mode": "avg"},
            {"type": "linear", "out": "classes"},
        ]

    return layers


def _cohen_welling_layers(dropout: float) -> Callable[[int, int], list[Any]]:
    """Cohen & Welling (2016) §8.1 Z2CNN / P4CNN as in tscohen/gconv_experiments: 6 blocks of 3×3
    conv (no padding) + batch norm + ReLU, 2×2 max pool after block 2, a last conv whose kernel
    covers the remaining map (4×4 on 28×28 → 1×1) with one field per class, max over rotations and
    space. ``dropout`` after blocks 1, 3, 4, 5, 6 (Z2CNN: 0.3; P4CNN: none, as in the released code)."""

    def layers(image_size: int, in_channels: int) -> list[Any]:
        def block(kind: str) -> list[Any]:
            return [{"type": kind, "out": 20, "kernel": 3, "padding": 0}, "batchnorm", "relu"]

        drop = [{"type": "dropout", "p": dropout}] if dropout else []
        size = image_size - 4
        out = block("lift") + drop + block("gconv") + [_pool(size)]
        for _ in range(4):
            out += block("gconv") + drop
        top = max(1, _after_pool(size) - 8)  # 4 on MNIST: the 4×4 map becomes 1×1
        return out + [
            {"type": "gconv", "out": "classes", "kernel": top, "padding": 0},
            {"type": "group_pool", "mode": "max"},
            {"type": "global_pool", "mode": "max"},
        ]

    return layers


def _c4cnn_gdl(image_size: int, in_channels: int) -> list[Any]:
    """GDL course tutorial 2 C4CNN (jipq6175's write-up): lift 8 fields (no activation), 4 group convs
    of 16-32-64-128 fields, 3×3, padding 1, bias, each + ReLU, a 3×3/stride 2/padding 1 max pool over
    space after the first three, rotation-averaged (orbit) pooling, MLP 3200-256-32-classes."""
    sizes = [image_size]
    for _ in range(3):
        sizes.append(_after_pool(sizes[-1]))
    out: list[Any] = [{"type": "lift", "out": 16, "kernel": 3, "padding": 1}]
    for i, width in enumerate((32, 64, 128, 256)):
        out += [{"type": "gconv", "out": width, "kernel": 3, "padding": 1}, "relu"]
        if i < 3:
            out.append(_pool(sizes[i]))
    return out + [
        {"type": "orbit_pool", "mode": "mean"},
        {"type": "linear", "out": 256},
        "relu",
        {"type": "linear", "out": 32},
        "relu",
        {"type": "linear", "out": "classes"},
    ]


def _cnn_gdl(image_size: int, in_channels: int) -> list[Any]:
    """The CNN the GDL C4CNN is compared with: 3×3 convs without padding (8-16-32-64-128), ReLU,
    3×3/stride 2/padding 1 max pools after the 2nd-4th, MLP 128-32-classes on the pooled features."""
    pool = {"type": "pool", "mode": "max", "kernel": 3, "stride": 2, "padding": 1}
    out: list[Any] = [{"type": "lift", "out": 8, "kernel": 3, "padding": 0}, "relu"]
    for i, width in enumerate((16, 32, 64, 128)):
        out += [{"type": "gconv", "out": width, "kernel": 3, "padding": 0}, "relu"]
        if i < 3:
            out.append(pool)
    return out + [
        {"type": "group_pool", "mode": "max"},
        {"type": "global_pool", "mode": "avg"},  # the map is 1×1 on 33×33 inputs: the published flatten
        {"type": "linear", "out": 32},
        "relu",
        {"type": "linear", "out": "classes"},
    ]


def _eqcnn(image_size: int, in_channels: int) -> list[Any]:
    """DEV article SimpleCNN / EqCNN: 3×3 convs (8, 16 channels, padding 1) + SiLU + 2×2 max pool,
    a last conv (16 channels) whose kernel covers the remaining map (7×7 on MNIST → 1×1) + SiLU,
    max over rotations, linear head."""
    s1 = _after_pool(image_size)
    s2 = _after_pool(s1)
    return [
        {"type": "lift", "out": 8, "kernel": 3},
        "silu",
        _pool(image_size),
        {"type": "gconv", "out": 16, "kernel": 3},
        "silu",
        _pool(s1),
        {"type": "gconv", "out": 16, "kernel": s2, "padding": 0},
        "silu",
        {"type": "group_pool", "mode": "max"},
        {"type": "global_pool", "mode": "max"},
        {"type": "linear", "out": "classes"},
    ]


_UVA = "UvA DL course, DL2 GDL tutorial 1 'Regular group convolutions' (D. Knigge), uvadlc-notebooks"
_POSIT = "R package gcnn (github.com/skeydan/gcnn), S. Keydana, Posit AI blog 2023-03-27"
_CW = "Cohen & Welling, Group Equivariant Convolutional Networks, ICML 2016, §8.1 (tscohen/gconv_experiments)"
_GDL = "GDL course (AMMI) tutorial 2 C4CNN, as trained in jipq6175.github.io/blog/2023/c4_convolution"
_DEV = "R. Freiberg, 'The 1 Principle to Build Regular Equivariant CNNs', DEV Community"

register_preset(
    Preset(
        "gcnn-uva",
        "UvA GDL notebook GroupEquivariantCNN: lift + 4 group convs of 16 fields on C4 (CNN width 32), 5×5, "
        "no padding, no bias, layer norm without affine, ReLU, mean over group and space, linear head",
        _uva_layers(bias=False),
        group="C4",
        image_size=28,
        reference=_UVA,
        published_params=102_970,
    )
)
register_preset(
    Preset(
        "cnn-uva",
        "UvA GDL notebook CNN: 5 convs of 32 channels, 5×5, no padding, with bias, layer norm without affine, "
        "ReLU, global average pool, linear head",
        _uva_layers(bias=True),
        group="C1",
        image_size=28,
        reference=_UVA,
        published_params=103_690,
    )
)
register_preset(
    Preset(
        "gcnn-posit",
        "R gcnn GroupEquivariantCNN (a port of the UvA notebook, same layers as gcnn-uva): C4, kernel 5, lift + "
        "4 hidden group convs of 16 fields, no bias, layer norm, ReLU, mean over group and space, linear head",
        _uva_layers(bias=False),
        group="C4",
        image_size=28,
        reference=_POSIT,
    )
)
register_preset(
    Preset(
        "cnn-posit",
        "the CNN the R gcnn post compares with (same layers as cnn-uva): 5 convs of 32 channels, 5×5, "
        "layer norm, ReLU, global average pool, linear head",
        _uva_layers(bias=True),
        group="C1",
        image_size=28,
        reference=_POSIT,
    )
)
register_preset(
    Preset(
        "z2cnn",
        "Cohen & Welling Z2CNN: 7 convs (six 3×3 of 20 channels + batch norm + ReLU, the last covering the "
        "remaining 4×4 map with one channel per class), max pool after layer 2, dropout 0.3, max over space",
        _cohen_welling_layers(dropout=0.3),
        group="C1",
        image_size=28,
        reference=_CW,
    )
)
register_preset(
    Preset(
        "p4cnn",
        "Cohen & Welling P4CNN: Z2CNN with p4 convolutions of 10 fields (CNN width 20), no dropout (as in the "
        "released code), last 4×4 group conv on the 4×4 map with one field per class, max over rotations",
        _cohen_welling_layers(dropout=0.0),
        group="C4",
        image_size=28,
        reference=_CW,
    )
)
register_preset(
    Preset(
        "c4cnn-gdl",
        "GDL tutorial C4CNN: lift 8 fields, group convs of 16-32-64-128 fields (CNN widths x2), 3×3, ReLU, "
        "3 spatial max pools, rotation-averaged (orbit) pooling, MLP head 256-32; published on 33×33 MNIST-rot",
        _c4cnn_gdl,
        group="C4",
        image_size=33,
        reference=_GDL,
    )
)
register_preset(
    Preset(
        "cnn-gdl",
        "the CNN the GDL C4CNN is compared with: 3×3 convs 8-16-32-64-128 without padding, ReLU, 3 max pools, "
        "MLP head 32",
        _cnn_gdl,
        widths="fields",
        group="C1",
        image_size=33,
        reference=_GDL,
    )
)
register_preset(
    Preset(
        "simplecnn",
        "DEV article SimpleCNN: 3×3 convs of 8 and 16 channels + SiLU + 2×2 max pool, a 7×7 conv of 16 "
        "channels on the 7×7 map, linear head",
        _eqcnn,
        group="C1",
        image_size=28,
        reference=_DEV,
        published_params=13_978,
    )
)
register_preset(
    Preset(
        "eqcnn",
        "DEV article EqCNN: simplecnn as a G-CNN with the same parameter budget (4-8-8 fields on C4), SiLU, "
        "max pooling over space, max over rotations, linear head",
        _eqcnn,
        group="C4",
        image_size=28,
        reference=_DEV,
    )
)


# ------------------------------------------------------------------------------------------
# Cohen & Welling (2016) §8.2, CIFAR-10 (numbers as in the README of tscohen/gconv_experiments)
# ------------------------------------------------------------------------------------------
# The published networks take 32×32 images and downsample with stride-2 3×3 convolutions
# (padding 1). On an even map such a grid is not centred on the image, so a quarter turn moves
# it by one pixel and rot90/flip equivariance is lost. gcnnkit's CIFAR-10 configs therefore feed
# 33×33 images (one replicated row and column, ``data.resize: pad``): 33 → 17 → 9, every grid
# centred, every layer exactly equivariant. Parameter counts do not depend on the input size.
_CW_CIFAR = (
    "Cohen & Welling, Group Equivariant Convolutional Networks, ICML 2016, §8.2 "
    "(tscohen/gconv_experiments, gconv_experiments/CIFAR10/models/*.py)"
)


def _allcnnc(width1: int, width2: int) -> Callable[[int, int], list[Any]]:
    """All-CNN-C (Springenberg et al. 2015) as in gconv_experiments ``CIFAR10/models/{,P4,P4M}AllCNNC.py``:
    dropout 0.2 on the input; 3×3 convs (padding 1, bias) of ``width1``, ``width1``, ``width1`` (stride 2),
    dropout 0.5, ``width2`` ×2, ``width2`` (stride 2), dropout 0.5, ``width2`` (3×3), ``width2`` (1×1),
    10 (1×1), each followed by batch norm and ReLU (the last too, as in the source); mean over
    the group and space (the source's ``sum / (8·8·|G|)``)."""

    def layers(image_size: int, in_channels: int) -> list[Any]:
        def cbr(kind: str, out: int | str, kernel: int = 3, stride: int = 1) -> list[Any]:
            padding = (kernel - 1) // 2
            return [
                {"type": kind, "out": out, "kernel": kernel, "stride": stride, "padding": padding},
                "batchnorm",
                "relu",
            ]

        return [
            {"type": "dropout", "p": 0.2},
            *cbr("lift", width1),
            *cbr("gconv", width1),
            *cbr("gconv", width1, stride=2),
            {"type": "dropout", "p": 0.5},
            *cbr("gconv", width2),
            *cbr("gconv", width2),
            *cbr("gconv", width2, stride=2),
            {"type": "dropout", "p": 0.5},
            *cbr("gconv", width2),
            *cbr("gconv", width2, kernel=1),
            *cbr("gconv", "classes", kernel=1),
            {"type": "group_pool", "mode": "mean"},
            {"type": "global_pool", "mode": "avg"},
        ]

    return layers


def _resnet(blocks: int, widths: tuple[int, int, int]) -> Callable[[int, int], list[Any]]:
    """The pre-activation ResNet of gconv_experiments ``CIFAR10/models/{,P4M}ResNet.py`` with
    ``6·blocks + 2`` layers (ResNet44: ``blocks=7``): a 3×3 lift of ``widths[0]``, three stages of
    ``blocks`` residual blocks (``residual_block_2d.py``: batch norm, ReLU, 3×3 conv, batch norm, ReLU,
    3×3 conv, plus the input; no activation after the sum), the first block of stages 2 and 3
    with stride 2 and a 1×1 projection shortcut (``fiber_map='linear'``: a convolution, no batch
    norm); then batch norm, ReLU, mean over the group and space, and a linear layer."""

    def layers(image_size: int, in_channels: int) -> list[Any]:
        out: list[Any] = [{"type": "lift", "out": widths[0], "kernel": 3, "padding": 1}]
        for stage, width in enumerate(widths):
            for i in range(blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                body = [
                    "batchnorm",
                    "relu",
                    {"type": "gconv", "out": width, "kernel": 3, "stride": stride, "padding": 1},
                    "batchnorm",
                    "relu",
                    {"type": "gconv", "out": width, "kernel": 3, "padding": 1},
                ]
                shortcut = "projection" if stride > 1 else "identity"
                out.append(
                    {"type": "residual", "layers": body, "shortcut": shortcut, "shortcut_norm": False, "act": "none"}
                )
        return out + [
            "batchnorm",
            "relu",
            {"type": "group_pool", "mode": "mean"},
            {"type": "global_pool", "mode": "avg"},
            {"type": "linear", "out": "classes"},
        ]

    return layers


def _p4cnn_rotation_pooling(image_size: int, in_channels: int) -> list[Any]:
    """Cohen & Welling's P4CNNRotationPooling (gconv_experiments ``MNIST_ROT/models/P4CNN_RP.py``): the
    Z2CNN where every layer is a p4 lifting convolution of 20 fields (3×3, no padding, bias) + batch
    norm + ReLU followed by a max over the rotations, so each layer sees a plain image; 2×2 max pool
    after layer 2; a last lift covering the remaining map (4×4 on 28×28) with one field per class;
    max over rotations and space. No dropout (commented out in the source)."""

    def layer() -> list[Any]:
        return [
            {"type": "lift", "out": 20, "kernel": 3, "padding": 0},
            "batchnorm",
            "relu",
            {"type": "group_pool", "mode": "max"},
        ]

    size = image_size - 4
    out = layer() + layer() + [_pool(size)]
    for _ in range(4):
        out += layer()
    top = max(1, _after_pool(size) - 8)
    return out + [
        {"type": "lift", "out": "classes", "kernel": top, "padding": 0},
        {"type": "group_pool", "mode": "max"},
        {"type": "global_pool", "mode": "max"},
    ]


#: Published parameter counts (the CIFAR-10 table of the paper and the gconv_experiments README; millions, 2 decimals).
CIFAR_PUBLISHED_PARAMS_M = {
    "allcnnc-z2": 1.37,
    "allcnnc-p4": 1.37,
    "allcnnc-p4m": 1.22,
    "resnet44-z2": 2.64,
    "resnet44-p4m": 2.62,
}

register_preset(
    Preset(
        "allcnnc-z2",
        "All-CNN-C on Z2 (a CNN): 3×3 convs of 96-96-96(stride 2)-192-192-192(stride 2)-192, 1×1 convs of 192 "
        "and 10, batch norm + ReLU after each, dropout 0.2/0.5/0.5, global mean; widths as in AllCNNC.py. "
        "1,372,254 parameters here (published 1.37M)",
        _allcnnc(96, 192),
        widths="fields",
        group="C1",
        image_size=33,
        reference=_CW_CIFAR,
    )
)
register_preset(
    Preset(
        "allcnnc-p4",
        "All-CNN-C on p4 (C4): All-CNN-C with 48 and 96 fields (P4AllCNNC.py: the Z2 widths / √4, the same "
        "parameter budget), max-free: mean over rotations and space. 1,371,006 parameters here (published 1.37M)",
        _allcnnc(48, 96),
        widths="fields",
        group="C4",
        image_size=33,
        reference=_CW_CIFAR,
    )
)
register_preset(
    Preset(
        "allcnnc-p4m",
        "All-CNN-C on p4m (D4): All-CNN-C with 32 and 64 fields (P4MAllCNNC.py: the Z2 widths / 3, fewer "
        "parameters than Z2), mean over the group and space. 1,219,678 parameters here (published 1.22M)",
        _allcnnc(32, 64),
        widths="fields",
        group="D4",
        image_size=33,
        reference=_CW_CIFAR,
    )
)
register_preset(
    Preset(
        "resnet44-z2",
        "ResNet44 on Z2 (a CNN): 3×3 lift + 3 stages of 7 pre-activation residual blocks of 32-64-128 channels "
        "(gconv_experiments README), stride-2 first blocks with 1×1 projections, batch norm, ReLU, global mean, "
        "linear head. 2,639,242 parameters here (published 2.64M)",
        _resnet(7, (32, 64, 128)),
        widths="fields",
        group="C1",
        image_size=33,
        reference=_CW_CIFAR,
    )
)
register_preset(
    Preset(
        "resnet44-p4m",
        "ResNet44 on p4m (D4): resnet44-z2 with 11-23-45 fields per stage (gconv_experiments README: the Z2 "
        "widths / √8), mean over the group and space before the linear head. 2,619,660 parameters here "
        "(published 2.62M)",
        _resnet(7, (11, 23, 45)),
        widths="fields",
        group="D4",
        image_size=33,
        reference=_CW_CIFAR,
    )
)
register_preset(
    Preset(
        "p4cnn-rotpool",
        "Cohen & Welling P4CNNRotationPooling: the Z2CNN with a p4 lifting convolution of 20 fields + batch norm + "
        "ReLU + max over rotations at every layer (P4CNN_RP.py), 2×2 max pool after layer 2, a last 4×4 lift with "
        "one field per class, max over rotations and space; published 3.21% test error on rotated MNIST",
        _p4cnn_rotation_pooling,
        widths="fields",
        group="C4",
        image_size=28,
        reference=_CW,
    )
)


# ------------------------------------------------------------------------------------------
# Weiler & Cesa (2019), MNIST-rot: steerable networks (escnn's E2SFCNN and its variants)
# ------------------------------------------------------------------------------------------
_WC = (
    "Weiler & Cesa, General E(2)-Equivariant Steerable CNNs, NeurIPS 2019, §3 MNIST-rot "
    "(QUVA-Lab/e2cnn_experiments, experiments/models/exp_e2sfcnn.py)"
)
#: the source's six convolutions: (fields, kernel, padding, 2×2 max pool after it)
_WC_CONVS = (
    (24, 9, 0, False),
    (32, 7, 3, True),
    (36, 7, 3, False),
    (36, 7, 3, True),
    (64, 7, 3, False),
    (96, 5, 0, False),
)
#: the source's head: dropout 0.3, two hidden layers of 96 (ELU), the classes
_WC_HEAD: list[Any] = [
    {"type": "dropout", "p": 0.3},
    {"type": "linear", "out": 96},
    "elu",
    {"type": "dropout", "p": 0.3},
    {"type": "linear", "out": 96},
    "elu",
    {"type": "dropout", "p": 0.3},
    {"type": "linear", "out": "classes"},
]


def _e2sfcnn(restrict_after: int | None = None) -> Callable[[int, int], list[Any]]:
    """E2SFCNN: six convs (9×9, then 7×7 ×4, then 5×5; 24-32-36-36-64-96 regular fields), each followed by
    batch norm and ReLU, 2×2 max pools after the 2nd and 4th (28 → 20 → 10 → 5 → 1), max over the group
    and space, the MLP head. ``restrict_after=k``: restrict ``D_N`` to its rotations ``C_N`` after the
    k-th conv (the source's ``restrict``; ``D16|5C16`` is ``k = 5`` on ``D16``)."""

    def layers(image_size: int, in_channels: int) -> list[Any]:
        out: list[Any] = []
        for i, (fields, kernel, padding, pool) in enumerate(_WC_CONVS, start=1):
            out.append({"type": "lift" if i == 1 else "gconv", "out": fields, "kernel": kernel, "padding": padding})
            if i == restrict_after:
                out.append({"type": "restrict", "subgroup": "rotations"})
            out += ["batchnorm", "relu"]
            if pool:
                out.append({"type": "pool", "mode": "max", "kernel": 2})
        return out + [{"type": "group_pool", "mode": "max"}, {"type": "global_pool", "mode": "max"}, *_WC_HEAD]

    return layers


def _e2sfcnn_steerable(fields_of: Callable[[int], dict[str, int]], nonlinearity: list[Any]):
    """E2SFCNN's layers with other field types: conv ``i`` has ``fields_of(F_i)`` fields (``F_i`` the
    source's regular field count), then batch norm (norm-based on irrep fields) and ``nonlinearity``;
    average pools (a max over the components of a rotating vector would not be equivariant); max over
    permutation fields and the norm of the others, then max over space and the head."""

    def layers(image_size: int, in_channels: int) -> list[Any]:
        out: list[Any] = []
        for i, (fields, kernel, padding, pool) in enumerate(_WC_CONVS, start=1):
            kind = "lift" if i == 1 else "gconv"
            out += [{"type": kind, "out": fields_of(fields), "kernel": kernel, "padding": padding}, "batchnorm"]
            out += nonlinearity
            if pool:
                out.append({"type": "pool", "mode": "avg", "kernel": 2})
        return out + [{"type": "group_pool", "mode": "max"}, {"type": "global_pool", "mode": "max"}, *_WC_HEAD]

    return layers


def _gated_mix(fields: int) -> dict[str, int]:
    """Regular, quotient ``D_N/C_2`` and ``irrep(1,1)`` fields of a dihedral group, each with a trivial gate
    in front (the gated nonlinearity's layout: gates first, as many as gated fields)."""
    gated = {"regular": round(fields / 2), "quotient(None,2)": round(fields / 4), "irrep(1,1)": round(fields / 2)}
    return {"trivial": sum(gated.values()), **gated}


def _irrep_mix(fields: int) -> dict[str, int]:
    """Band-limited irreps of a rotation group (``SO2``, or ``C_N`` with N ≥ 8): frequencies 0 to 3."""
    half = round(fields / 2)
    return {"trivial": half, "irrep(1)": half, "irrep(2)": half, "irrep(3)": round(fields / 4)}


register_preset(
    Preset(
        "e2sfcnn",
        "Weiler & Cesa's MNIST-rot network E2SFCNN: 6 convs 9-7-7-7-7-5 of 24-32-36-36-64-96 regular fields, "
        "batch norm, ReLU, 2 max pools, max over the group and space, MLP head 96-96 (ELU, dropout 0.3); "
        "published on C16 / D16 (escnn); scale with model.width_multiplier",
        _e2sfcnn(),
        widths="fields",
        group="C16",
        image_size=28,
        reference=_WC,
    )
)
register_preset(
    Preset(
        "e2sfcnn-restrict",
        "e2sfcnn on a dihedral group D_N, restricted to its rotations C_N after the 5th conv: Weiler & Cesa's "
        "best MNIST-rot model D16|5C16 (0.68% test error); D4|5C4 on the native backend",
        _e2sfcnn(restrict_after=5),
        widths="fields",
        group="D16",
        image_size=28,
        reference=_WC,
    )
)
register_preset(
    Preset(
        "e2sfcnn-gated",
        "e2sfcnn's layers on a dihedral group D_N with a mix of regular, quotient D_N/C_2 and irrep(1,1) fields "
        "(F/2, F/4, F/2 for the source's F regular fields), each with its own trivial gate: batch norm, gated "
        "nonlinearity, average pools",
        _e2sfcnn_steerable(_gated_mix, ["gated"]),
        widths="fields",
        group="D4",
        image_size=28,
        reference=_WC,
    )
)
register_preset(
    Preset(
        "e2sfcnn-irreps",
        "e2sfcnn's layers with band-limited irrep fields (trivial, irrep(1), irrep(2): F/2 each, irrep(3): F/4 "
        "for the source's F regular fields) and norm-ReLU, average pools, norms as invariants: SO(2) on escnn "
        "(also C_N, N >= 8)",
        _e2sfcnn_steerable(_irrep_mix, [{"type": "norm_act", "fn": "relu"}]),
        widths="fields",
        group="SO2",
        image_size=28,
        reference=_WC,
    )
)
