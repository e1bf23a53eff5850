"""``gcnnkit compare``: two backends cross-validated layer by layer and end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import assert_user_error

pytest.importorskip("escnn")

from gcnnkit.cli import main  # noqa: E402
from gcnnkit.core.errors import ConfigError  # noqa: E402
from gcnnkit.core.group import cyclic_group  # noqa: E402
from gcnnkit.core.registry import get_backend  # noqa: E402
from gcnnkit.models.network import build_model, build_network  # noqa: E402
from gcnnkit.models.spec import parse_layers  # noqa: E402
from gcnnkit.tools.compare import (  # noqa: E402
    compare_networks,
    parse_backends,
)

pytestmark = pytest.mark.escnn

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
FAST = ["--repeats", "1", "--timing-batch", "2", "--batch", "2"]
SMALL = ["--set", "model.preset=gcnn-tiny", "--set", "data.image_size=12"]


def tiny_config(tmp_path: Path, group: str = "C4", backend: str = "escnn", options: dict | None = None) -> Path:
    raw = {
        "seed": 0,
        "model": {"backend": backend, "group": group, "preset": "gcnn-tiny", "backend_options": options or {}},
        "data": {"name": "digits", "image_size": 12},
    }
    path = tmp_path / f"{group}_{backend}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def complete_json(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare")
    plot = folder / "equivariance.png"
    config = tiny_config(folder, "D4", "escnn", {"basis": "complete"})
    result = invoke("compare", config, "--backends", "native,escnn", "--json", "--plot", plot, *FAST)
    return result, plot


def test_compare_json_has_every_number_and_passes(complete_json):
    result, plot = complete_json
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in (
        "group",
        "backends",
        "backend_options",
        "input_shape",
        "params",
        "equivariance_exact",
        "transfer",
        "transfer_max_rel_error",
        "exact_transfers",
        "timing",
        "layers",
        "failures",
        "passed",
    ):
        assert key in report, key
    assert report["group"] == "D4" and report["backends"] == ["native", "escnn"]
    assert report["backend_options"] == {"native": {}, "escnn": {"basis": "complete"}}
    assert report["input_shape"] == [1, 12, 12] and report["passed"] and not report["failures"]
    assert report["params"]["native"] == report["params"]["escnn"]
    assert report["transfer_max_rel_error"] == report["transfer"]["escnn->native"] <= 1e-5
    assert report["transfer"]["native->escnn"] <= 1e-5
    assert sorted(report["exact_transfers"]) == ["escnn->native", "native->escnn"]
    assert report["equivariance_nonexact"] is None  # D4 has only exact elements
    assert max(report["equivariance_exact"].values()) <= 1e-5
    timing = report["timing"]
    for name in ("native", "escnn"):
        assert timing[name]["forward_ms"] > 0 and timing[name]["forward_backward_ms"] > 0
    assert timing["forward_ratio"] > 0 and timing["forward_backward_ratio"] > 0
    layers = report["layers"]
    assert layers[-1]["name"] == "end-to-end" and layers[0]["name"] == "0.lift"
    for layer in layers:
        stats = layer["backends"]
        assert stats["native"]["output_shape"] == stats["escnn"]["output_shape"]
        assert stats["native"]["params"] == stats["escnn"]["params"]
        assert max(layer["transfer"].values()) <= 1e-5, layer
        assert layer["projection_residual"]["native->escnn"] <= 1e-6
    # the plot is a PNG
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_table_with_escnns_default_basis(tmp_path):
    """escnn's default basis: escnn -> native is still exact (and judged), native -> escnn is a projection
    (reported with its residual, not judged)."""
    result = invoke("compare", tiny_config(tmp_path, "C4", "native"), *FAST)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "C4: native vs escnn" in out and "end-to-end" in out and "transfer escnn->native" in out
    assert "transfers exact by construction (judged): escnn->native" in out
    assert "time escnn/native" in out and out.strip().splitlines()[-1].startswith("ok:")
    result = invoke("compare", tiny_config(tmp_path, "C4", "native"), *FAST, "--json")
    report = json.loads(result.stdout)
    assert report["exact_transfers"] == ["escnn->native"]
    assert report["transfer_max_rel_error"] <= 1e-5
    lift = report["layers"][0]
    assert lift["projection_residual"]["native->escnn"] > 0.1 and lift["transfer"]["native->escnn"] > 1e-2
    assert report["params"]["escnn"] < report["params"]["native"]


def test_compare_exits_1_when_a_check_fails(tmp_path):
    result = invoke("compare", tiny_config(tmp_path), *FAST, "--tolerance", "1e-12")
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output


@pytest.mark.parametrize(
    "args,words",
    [
        (["--backends", "native"], "--backends: expected two different backends"),
        (["--backends", "native,native"], "--backends: expected two different backends"),
        (["--backends", "native,nope"], "unknown backend 'nope'"),
        (["--set", "model.backend_options.basis=full"], "'full' is not allowed"),
        (["--set", "model.group=Q7"], "unknown group 'Q7'"),
    ],
)
def test_user_errors_are_one_line_with_exit_2(tmp_path, args, words):
    assert_user_error(invoke("compare", tiny_config(tmp_path), *args, *FAST), words)


def test_escnn_configs_differ_from_the_native_ones_only_in_the_backend():
    for group in ("c4", "d4"):
        native = yaml.safe_load((CONFIGS / f"digits_{group}.yaml").read_text())
        escnn = yaml.safe_load((CONFIGS / f"digits_{group}_escnn.yaml").read_text())
        assert escnn["model"].pop("backend") == "escnn" and native["model"].pop("backend") == "native"
        assert escnn["model"].pop("backend_options") == {"basis": "complete"}
        native["model"].pop("backend_options", None)
        assert escnn == native


def test_shipped_escnn_config_compares_cleanly():
    result = invoke("compare", CONFIGS / "digits_c4_escnn.yaml", *FAST, *SMALL, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["transfer_max_rel_error"] <= 1e-5 and report["passed"]


def test_c8_reports_non_exact_rotations_separately():
    group = cyclic_group(8)
    layers = parse_layers(
        [
            {"type": "lift", "out": 3, "kernel": 5},
            "batchnorm",
            "relu",
            {"type": "gconv", "out": 3},
            {"type": "group_pool"},
            "global_pool",
            {"type": "linear", "out": 4},
        ]
    )
    backends = {"native": get_backend("native"), "escnn": get_backend("escnn")}
    nets = {}
    for name, backend in backends.items():
        torch.manual_seed(0)
        nets[name] = build_network(layers, backend, group, 1, 4)
    report = compare_networks(nets, backends, (1, 15, 15), batch=2, repeats=1, timing_batch=2)
    data = report.to_dict()
    assert data["exact_elements"] == ["e", "r2", "r4", "r6"]
    assert data["nonexact_elements"] == ["r1", "r3", "r5", "r7"]
    assert max(data["equivariance_exact"].values()) <= 1e-5
    for name in ("native", "escnn"):
        assert 1e-4 < data["equivariance_nonexact"][name] < 1.0
    assert data["exact_transfers"] == []  # C8 is not exact: native interpolates, escnn samples a steerable basis
    assert report.passed


def test_transfer_hooks_fall_back_to_state_dicts():
    native = get_backend("native")
    torch.manual_seed(0)
    a = build_model("native", "C4", preset="gcnn-tiny", in_channels=1, image_size=10, num_classes=3)
    b = build_model("native", "C4", preset="gcnn-tiny", in_channels=1, image_size=10, num_classes=3)
    for src, dst in zip(a.layers, b.layers, strict=True):
        assert native.import_weights(dst, native.export_weights(src)) == 0.0
    x = torch.randn(2, 1, 10, 10)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


def test_helpers():
    assert parse_backends(" native , escnn ") == ["native", "escnn"]
    with pytest.raises(ConfigError):
        parse_backends("native,escnn,other")
