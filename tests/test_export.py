"""Export to plain PyTorch: same outputs, still invariant, every fallback path, the files, and
loading them in a process where gcnnkit, gcnnkit_native and escnn cannot be imported."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import ROOT, assert_user_error
from torch import nn

from gcnnkit.cli import main
from gcnnkit.core.errors import GcnnkitError, PluginError
from gcnnkit.core.layers import ACTIVATIONS, EquivariantLayer, FieldBatchNorm, GroupPool2d
from gcnnkit.core.registry import get_backend, get_group
from gcnnkit.core.transforms import transform_image
from gcnnkit.models.network import build_model, build_network
from gcnnkit.models.spec import parse_layers
from gcnnkit.tools.export import (
    FORMATS,
    describe,
    export_model,
    floor_model,
    load_export,
    load_state_export,
    min_image_size,
    run_export,
    save_export,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:FutureWarning")

PLAIN_TYPES = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.GroupNorm,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Unflatten,
    nn.Linear,
    nn.Dropout,
    GroupPool2d,
    *ACTIVATIONS.values(),
)
TOL = 1e-5

#: Every layer type and option the exporter maps, on a group map and after group pooling.
MIXED_LAYERS = [
    {"type": "lift", "out": 3, "kernel": 3, "padding": 0, "bias": False},
    "batchnorm",
    "elu",
    {"type": "gconv", "out": 4, "kernel": 3, "stride": 2, "padding": 1},
    {"type": "pool", "mode": "avg", "kernel": 3, "stride": 1, "padding": 1},
    "leaky_relu",
    {"type": "gconv", "out": 2, "kernel": 5, "dilation": 2, "padding": "same"},
    "batchnorm",
    "gelu",
    {"type": "dropout", "p": 0.3},
    {"type": "global_pool", "mode": "max"},  # straight from the group map
    {"type": "linear", "out": 7},
    "tanh",
    {"type": "linear", "out": "classes", "bias": False},
]
GROUP_POOL_LAYERS = [
    {"type": "lift", "out": 4, "kernel": 5},
    "batchnorm",
    "silu",
    {"type": "group_pool", "mode": "mean"},
    "batchnorm",  # image batch norm
    {"type": "pool", "mode": "max", "kernel": 2},
    "sigmoid",
    {"type": "global_pool", "mode": "avg"},
    {"type": "linear", "out": "classes"},
]
#: Every plain module type in one network, for the file formats and the loader without gcnnkit.
FILE_LAYERS = [
    {"type": "lift", "out": 4, "kernel": 5},
    "batchnorm",
    "silu",
    {"type": "gconv", "out": 3, "kernel": 3},
    {"type": "layernorm"},
    {"type": "group_pool", "mode": "mean"},
    "batchnorm",
    {"type": "pool", "mode": "max", "kernel": 2},
    "sigmoid",
    {"type": "orbit_pool", "mode": "max"},
    {"type": "linear", "out": "classes"},
]
#: Layer norm (with and without affine, on a group map and on vectors) and orbit pooling.
ORBIT_LAYERS = [
    {"type": "lift", "out": 3, "kernel": 3},
    {"type": "layernorm", "affine": True},
    "relu",
    {"type": "gconv", "out": "classes", "kernel": 3, "padding": 0},
    {"type": "layernorm", "affine": False, "eps": 1e-3},
    {"type": "orbit_pool", "mode": "max"},
    {"type": "layernorm"},
    {"type": "linear", "out": 4},
]
ORBIT_MEAN_LAYERS = [
    {"type": "lift", "out": 2, "kernel": 5},
    "relu",
    {"type": "group_pool", "mode": "max"},
    {"type": "orbit_pool", "mode": "mean"},  # on an image
    {"type": "linear", "out": "classes"},
]


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    return diff / scale if scale else (0.0 if diff == 0 else math.inf)


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial batch-norm statistics and affine parameters, non-zero biases."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
            elif getattr(m, "bias", None) is not None and isinstance(m.bias, nn.Parameter):
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
                if getattr(m, "weight", None) is not None and m.weight.shape == m.bias.shape:  # norms' scale
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
    return net.eval()


def tiny_net(group: str = "C4", backend: str = "native", size: int = 12, seed: int = 0):
    torch.manual_seed(seed)
    net = build_model(backend, group, preset="gcnn-tiny", in_channels=1, image_size=size, num_classes=5)
    return randomize(net, seed)


def custom_net(layers, group: str = "C4", backend=None, in_channels: int = 2, seed: int = 0, image_size: int = 13):
    torch.manual_seed(seed)
    backend = backend or get_backend("native")
    specs = parse_layers(layers)  # the exporter must map off-centre strides and pools too: allowed here
    group_obj = get_group(group)
    net = build_network(specs, backend, group_obj, in_channels, 6, image_size=image_size, allow_non_equivariant=True)
    return randomize(net, seed)


# ------------------------------------------------------------------------- the exported module
@pytest.mark.parametrize("group", ["C1", "C4", "D4"])
@pytest.mark.parametrize(("preset", "size"), [("gcnn-tiny", 12), ("gcnn-small", 17)])
def test_export_reproduces_the_network_and_stays_invariant(group, preset, size):
    torch.manual_seed(0)
    net = randomize(build_model("native", group, preset=preset, in_channels=1, image_size=size, num_classes=10))
    plain = export_model(net, image_size=size)
    assert isinstance(plain, nn.Sequential) and not plain.training
    assert all(isinstance(m, PLAIN_TYPES) for m in plain), [type(m).__name__ for m in plain]
    info = plain.gcnnkit_export
    assert info.rel_error <= TOL and all(layer.rel_error <= TOL for layer in info.layers)
    assert {layer.method for layer in info.layers if layer.name.endswith(("lift", "gconv"))} == {"export_plain"}
    x = torch.randn(3, 1, size, size)
    with torch.no_grad():
        y = plain(x)
        assert rel_err(y, net(x)) <= TOL
        g = get_group(group)
        for element in range(g.order):
            assert rel_err(plain(transform_image(x, g, element)), y) <= TOL, g.element_names[element]
    # no storage shared with the network: changing the network leaves the export alone
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        assert torch.equal(plain(x), y)


def test_exported_batchnorm_repeats_each_fields_statistics():
    net = tiny_net("D4")
    plain = export_model(net)
    field_bn, flat_bn = net.layers[1], plain[1]
    assert isinstance(flat_bn, nn.BatchNorm2d) and flat_bn.num_features == field_bn.num_features * 8
    for name in ("running_mean", "running_var", "weight", "bias"):
        assert torch.equal(getattr(flat_bn, name), getattr(field_bn, name).repeat_interleave(8))
    assert flat_bn.eps == field_bn.eps and flat_bn.momentum == field_bn.momentum
    assert int(flat_bn.num_batches_tracked) == int(field_bn.num_batches_tracked)


@pytest.mark.parametrize(
    "layers",
    [MIXED_LAYERS, GROUP_POOL_LAYERS, ORBIT_LAYERS, ORBIT_MEAN_LAYERS],
    ids=["mixed", "group_pool", "orbit_max", "orbit_mean"],
)
@pytest.mark.parametrize("group", ["C2", "D4"])
def test_every_layer_type_and_option_exports(layers, group):
    net = custom_net(layers, group)
    size = 13
    plain = export_model(net, image_size=size)
    assert all(isinstance(m, PLAIN_TYPES) for m in plain)
    x = torch.randn(2, 2, size, size)
    with torch.no_grad():
        y = plain(x)
        assert rel_err(y, net(x)) <= TOL
        if layers in (ORBIT_LAYERS, ORBIT_MEAN_LAYERS):  # no strides or asymmetric pools: invariant
            g = get_group(group)
            for element in range(g.order):
                assert rel_err(plain(transform_image(x, g, element)), y) <= TOL
    assert len(plain.gcnnkit_export.sources) == len(plain)
    methods = [layer.method for layer in plain.gcnnkit_export.layers]  # plain torch layers are copied
    assert methods == ["export_plain" if isinstance(m, EquivariantLayer) else "copy" for m in net.layers]


def test_orbit_pool_fixes_the_image_size_of_the_export():
    net = custom_net(ORBIT_LAYERS, "C4", image_size=11)
    assert min_image_size(net) == 11  # the head after orbit_pool reads 9x9 maps: only an 11x11 input fits
    plain = export_model(net)
    assert plain.gcnnkit_export.image_shape == (2, 11, 11)


def test_floor_has_the_exports_structure():
    net = custom_net(MIXED_LAYERS, "D4")
    floor, plain = floor_model(net), export_model(net)
    assert [type(m) for m in floor] == [type(m) for m in plain]
    for a, b in zip(floor.state_dict().values(), plain.state_dict().values(), strict=True):
        assert a.shape == b.shape


def test_min_image_size_follows_strides_and_pools():
    net = custom_net(MIXED_LAYERS, "C4")
    s = min_image_size(net)
    assert s >= 1
    with torch.no_grad():
        net(torch.randn(1, 2, s, s))  # valid
        if s > 1:
            with pytest.raises(RuntimeError):
                net(torch.randn(1, 2, s - 1, s - 1))


def test_export_of_a_non_exact_group():
    net = tiny_net("C8", size=13)
    plain = export_model(net, image_size=13)
    x = torch.randn(2, 1, 13, 13)
    with torch.no_grad():
        assert rel_err(plain(x), net(x)) <= TOL


# ------------------------------------------------------------------ the contract is enforced
class Opaque(nn.Module):
    """A convolution hidden in a plain module: not an EquivariantConv, so outside the contract."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


class WrongExport(FieldBatchNorm):
    """A contract layer whose export_plain computes something else."""

    def export_plain(self) -> nn.Module:
        return nn.Identity()


class FieldScale(nn.Module):
    """A plain module that is not pointwise on the flattened layout (a per-field scale): it must be an
    EquivariantLayer with its own export to be exported."""

    def __init__(self, fields: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.rand(fields) + 0.5)

    def forward(self, x):
        return x * self.scale.view(1, -1, *([1] * (x.ndim - 2)))


def odd_backend(conv_wrapper=None, norm=None):
    native = type(get_backend("native"))

    class Odd(native):
        name = "odd-test"

        def lifting_conv(self, *args, **kwargs):
            layer = super().lifting_conv(*args, **kwargs)
            return conv_wrapper(layer) if conv_wrapper else layer

        def batch_norm(self, group, in_type):
            if in_type.kind != "group" or norm is None:
                return super().batch_norm(group, in_type)
            return norm(in_type.channels, group.order)

    return Odd()


def test_a_convolution_outside_the_contract_is_refused_at_build():
    with pytest.raises(
        PluginError, match=r"backend 'odd-test': lifting_conv returned a Opaque, not an EquivariantConv"
    ):
        custom_net(MIXED_LAYERS, "C4", backend=odd_backend(conv_wrapper=Opaque))


@pytest.mark.parametrize("norm", [WrongExport, lambda fields, order: FieldScale(fields)], ids=["export", "plain"])
def test_a_layer_whose_export_differs_fails_with_one_line_naming_it(norm):
    net = custom_net(MIXED_LAYERS, "D4", backend=odd_backend(norm=norm))
    randomize(net)
    with pytest.raises(GcnnkitError, match=r"export: layer 1\.batchnorm \((WrongExport|FieldScale)\) differs") as info:
        export_model(net, image_size=13)
    assert "\n" not in str(info.value)


@pytest.mark.escnn
def test_the_escnn_backend_exports_if_installed():
    pytest.importorskip("escnn")
    for group in ("C4", "D4"):
        net = tiny_net(group, backend="escnn")
        plain = export_model(net)
        assert all(isinstance(m, PLAIN_TYPES) for m in plain)
        x = torch.randn(2, 1, 12, 12)
        g = get_group(group)
        with torch.no_grad():
            y = plain(x)
            assert rel_err(y, net(x)) <= TOL
            for element in range(g.order):
                assert rel_err(plain(transform_image(x, g, element)), y) <= TOL


# ------------------------------------------------------------------------------------ files
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A D4 network with every layer type, its export, and the export saved in every format."""
    net = custom_net(FILE_LAYERS, "D4", in_channels=1, image_size=12)
    plain = export_model(net, image_size=12)
    folder = tmp_path_factory.mktemp("export")
    files = {}
    for fmt in FORMATS:
        try:
            files[fmt] = save_export(plain, folder / f"model.{fmt}", fmt, (1, 12, 12), {"group": "D4"})
        except ImportError:  # ONNX export needs packages that may be missing
            assert fmt == "onnx"
    return net, plain, files, folder


@pytest.mark.parametrize("fmt", FORMATS)
def test_saved_files_load_back_with_the_same_outputs(exported, fmt):
    net, _, files, _ = exported
    if fmt == "onnx" and ("onnx" not in files or not _has("onnxruntime")):
        pytest.skip("ONNX export or onnxruntime is not available")
    loaded = load_export(files[fmt], fmt)
    x = torch.randn(5, 1, 12, 12)  # another batch size than the export's example
    with torch.no_grad():
        assert rel_err(run_export(loaded, x), net(x)) <= TOL


def test_state_file_holds_architecture_state_dict_and_metadata(exported):
    _, plain, files, _ = exported
    saved = torch.load(files["state"], weights_only=True)
    assert saved["format"] == "gcnnkit-plain" and saved["version"] == 1
    assert saved["architecture"] == describe(plain)
    assert [e["type"] for e in saved["architecture"]][:3] == ["Conv2d", "BatchNorm2d", "SiLU"]
    assert saved["architecture"][0]["source"] == "0.lift"
    assert saved["metadata"] == {"group": "D4"}
    assert set(saved["state_dict"]) == set(plain.state_dict())
    assert isinstance(load_state_export(files["state"]), nn.Sequential)


def test_torchscript_and_onnx_carry_the_metadata(exported):
    _, _, files, _ = exported
    extra = {"gcnnkit.json": ""}
    torch.jit.load(str(files["torchscript"]), _extra_files=extra)
    assert json.loads(extra["gcnnkit.json"]) == {"group": "D4"}
    onnx = pytest.importorskip("onnx")
    assert "onnx" in files
    props = {p.key: p.value for p in onnx.load(str(files["onnx"])).metadata_props}
    assert json.loads(props["gcnnkit"]) == {"group": "D4"}


def test_unknown_format_is_a_one_line_error(exported):
    _, plain, _, folder = exported
    with pytest.raises(GcnnkitError, match="allowed: torchscript, onnx, state"):
        save_export(plain, folder / "x", "pickle", (1, 12, 12))


def docs_loader() -> str:
    """The state-file loader printed in docs/export.md."""
    text = (ROOT / "docs" / "export.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "def load_plain" in b]
    assert len(blocks) == 1
    return blocks[0]


def test_the_documented_loader_is_at_most_30_lines():
    lines = [line for line in docs_loader().splitlines() if line.strip()]
    assert len(lines) <= 30, len(lines)


BLOCKED = ("gcnnkit", "gcnnkit_native", "escnn")
LOAD_SCRIPT = """
import sys

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("blocked: " + name)
        return None

sys.meta_path.insert(0, Blocker())
for name in {blocked!r}:
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(name + " could be imported")

import os
import warnings
warnings.simplefilter("ignore")
import torch
{loader}
folder = {folder!r}
x = torch.load(folder + "/input.pt", weights_only=True)
out = {{}}
out["state"] = load_plain(folder + "/model.state")(x)
out["torchscript"] = torch.jit.load(folder + "/model.torchscript")(x)
try:
    import onnxruntime
except ImportError:
    onnxruntime = None
if onnxruntime is not None and os.path.exists(folder + "/model.onnx"):
    session = onnxruntime.InferenceSession(folder + "/model.onnx", providers=["CPUExecutionProvider"])
    out["onnx"] = torch.from_numpy(session.run(None, {{"images": x.numpy()}})[0])
torch.save(out, folder + "/outputs.pt")
print(sorted(out), [m for m in sys.modules if m.split(".")[0] in {blocked!r}])
"""


def test_exported_files_run_where_gcnnkit_cannot_be_imported(exported):
    net, _, files, folder = exported
    x = torch.randn(4, 1, 12, 12)
    torch.save(x, folder / "input.pt")
    script = LOAD_SCRIPT.format(blocked=BLOCKED, loader=docs_loader(), folder=str(folder))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("[]")  # none of the blocked packages got loaded
    outputs = torch.load(folder / "outputs.pt", weights_only=True)
    expected = {"state", "torchscript"} | ({"onnx"} if "onnx" in files and _has("onnxruntime") else set())
    assert expected <= set(outputs)
    with torch.no_grad():
        y = net(x)
    for fmt, out in outputs.items():
        assert rel_err(out, y) <= TOL, fmt


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------ command line
def _run_model(run_dir: Path) -> tuple[nn.Module, dict]:
    from gcnnkit.run.config import Config
    from gcnnkit.run.rundir import CHECKPOINT_FILE, build_model_from_config, load_checkpoint

    checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
    net = build_model_from_config(Config.from_dict(checkpoint["config"]))
    net.load_state_dict(checkpoint["model"])
    return net.eval(), checkpoint


@pytest.mark.parametrize("fmt", ["state", "torchscript", "onnx"])
def test_cli_exports_a_run(tiny_run, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx")
    out = tmp_path / f"model.{fmt}"
    result = CliRunner().invoke(main, ["export", str(tiny_run), "--format", fmt, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["path"] == str(out) and out.is_file()
    if fmt == "onnx" and not _has("onnxruntime"):
        assert report["rel_error"] is None and "onnxruntime" in report["checked_with"]
        return
    assert report["rel_error"] <= TOL and report["invariance_error"] <= TOL
    net, _ = _run_model(tiny_run)
    x = torch.randn(3, 1, 17, 17)
    with torch.no_grad():
        assert rel_err(run_export(load_export(out, fmt), x), net(x)) <= TOL


def test_cli_export_with_normalisation_takes_raw_images(tiny_run_copy):
    from gcnnkit.run.data import normalise

    result = CliRunner().invoke(main, ["export", str(tiny_run_copy), "--include-normalisation"])
    assert result.exit_code == 0, result.output
    assert "max relative difference" in result.stdout
    path = tiny_run_copy / "model.ts"  # the default --out for torchscript
    net, checkpoint = _run_model(tiny_run_copy)
    stats = checkpoint["normalisation"]
    extra = {"gcnnkit.json": ""}
    model = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["gcnnkit.json"])["normalisation"]["included"] is True
    x = torch.rand(3, 1, 17, 17)
    with torch.no_grad():
        expected = net(normalise(x, torch.tensor(stats["mean"]), torch.tensor(stats["std"])))
        assert rel_err(model(x), expected) <= TOL


def test_cli_export_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(main, ["export", str(tmp_path), "--out", str(tmp_path / "m.ts")])
    assert_user_error(result, "not a run directory")
    result = CliRunner().invoke(main, ["export", str(tmp_path), "--format", "pickle"])
    assert result.exit_code == 2 and "pickle" in result.output
