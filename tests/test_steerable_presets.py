"""Weiler & Cesa's MNIST-rot family as presets (issue 11): e2sfcnn (regular fields), e2sfcnn-restrict
(D_N → C_N after the 5th conv: D16|5C16 on escnn, D4|5C4 on native), e2sfcnn-gated (regular, quotient
and irrep fields with gates) and e2sfcnn-irreps (band-limited irreps, norm-ReLU; SO(2) on escnn);
``model.width_multiplier``, which runs them narrower on a CPU; ``restrict: {subgroup: rotations}``."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import CONFIGS
from hypothesis import given, settings
from hypothesis import strategies as st

from gcnnkit.cli import main
from gcnnkit.core.errors import ConfigError, SpecError
from gcnnkit.models.network import build_model, scaled_counts
from gcnnkit.models.presets import get_preset
from gcnnkit.run.check import check_equivariance
from gcnnkit.run.config import Config

STEERABLE_PRESETS = ("e2sfcnn", "e2sfcnn-restrict", "e2sfcnn-gated", "e2sfcnn-irreps")
TOL = 1e-5


def _build(name: str, group: str, backend: str = "native", multiplier: float = 1.0, **options):
    return build_model(
        backend,
        group,
        preset=name,
        in_channels=1,
        image_size=28,
        num_classes=10,
        width_multiplier=multiplier,
        backend_options=options or None,
    )


def _conv_fields(net) -> list[str]:
    return [str(out) for name, _, _, out in net.typed_layers() if name.endswith(("lift", "gconv"))]


# ------------------------------------------------------------------------------ the presets
def test_the_presets_are_registered_with_their_source():
    for name in STEERABLE_PRESETS:
        preset = get_preset(name)
        assert "Weiler & Cesa" in preset.reference and "exp_e2sfcnn.py" in preset.reference
        assert preset.widths == "fields" and preset.image_size == 28
    assert get_preset("e2sfcnn-restrict").group == "D16" and get_preset("e2sfcnn-irreps").group == "SO2"


def test_e2sfcnn_has_the_sources_layers():
    layers = get_preset("e2sfcnn").layers(28, 1)
    convs = [entry for entry in layers if isinstance(entry, dict) and entry["type"] in ("lift", "gconv")]
    assert [(c["out"], c["kernel"], c["padding"]) for c in convs] == [
        (24, 9, 0),
        (32, 7, 3),
        (36, 7, 3),
        (36, 7, 3),
        (64, 7, 3),
        (96, 5, 0),
    ]
    linears = [entry["out"] for entry in layers if isinstance(entry, dict) and entry["type"] == "linear"]
    assert linears == [96, 96, "classes"]


@pytest.mark.parametrize(
    ("name", "group", "params"),
    [
        ("e2sfcnn", "C4", 1_718_722),
        ("e2sfcnn", "C1", 446_482),
        ("e2sfcnn-restrict", "D4", 3_415_042),
        ("e2sfcnn", "D4", 3_415_042),
        ("e2sfcnn-gated", "D4", 2_331_973),
    ],
)
def test_native_parameter_counts(name, group, params):
    net = _build(name, group)
    assert net.num_parameters() == params
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_restriction_happens_after_the_fifth_conv():
    net = _build("e2sfcnn-restrict", "D4", multiplier=0.25)
    names = net.layer_names()
    restrict = next(i for i, n in enumerate(names) if n.endswith("restrict"))
    assert sum(n.endswith(("lift", "gconv")) for n in names[:restrict]) == 5
    assert net.symmetry(0)[0].name == "D4" and net.symmetry(len(names) - 1)[0].name == "C4"


@pytest.mark.parametrize(("name", "group"), [("e2sfcnn-restrict", "D4"), ("e2sfcnn-gated", "D4"), ("e2sfcnn", "C4")])
def test_presets_pass_the_check_on_native(name, group):
    config = Config.from_dict(
        {"model": {"group": group, "preset": name, "width_multiplier": 0.25}, "data": {"name": "MNIST"}}
    )
    report = check_equivariance(config, elements="exact", batch=1)
    assert report.passed, report.to_dict()
    assert report.to_dict()["max_rel_error"] <= TOL


def test_gated_preset_mixes_regular_quotient_and_irrep_fields_with_their_gates():
    fields = _conv_fields(_build("e2sfcnn-gated", "D4", multiplier=0.5))
    assert all("regular" in f and "quotient" in f and "irrep_1,1" in f and "trivial" in f for f in fields)


# ------------------------------------------------------------------------------ escnn
@pytest.mark.escnn
def test_escnn_builds_the_published_pair_at_full_and_quarter_width():
    pytest.importorskip("escnn")
    assert _build("e2sfcnn", "C16", backend="escnn").num_parameters() == 2_692_306  # docs/architectures.md
    c16 = _build("e2sfcnn", "C16", backend="escnn", multiplier=0.25)
    assert c16.num_parameters() == 180_028
    d16 = _build("e2sfcnn-restrict", "D16", backend="escnn", multiplier=0.25)
    assert d16.num_parameters() == 346_972
    assert d16.symmetry(len(d16.layer_names()) - 1)[0].name == "C16"
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        for net in (c16, d16):  # exact quarter turns: the same logits
            net.eval()
            assert torch.allclose(net(x), net(torch.rot90(x, 1, (2, 3))), atol=1e-4)


@pytest.mark.escnn
def test_irreps_preset_on_so2_uses_norm_nonlinearities():
    pytest.importorskip("escnn")
    net = _build("e2sfcnn-irreps", "SO2", backend="escnn", multiplier=0.25)
    fields = _conv_fields(net)
    assert all("irrep_1" in f and "irrep_3" in f for f in fields)
    assert any(n.endswith("norm_act") for n in net.layer_names())
    with pytest.raises(Exception, match="SO2"):
        _build("e2sfcnn-irreps", "SO2", backend="native")


@pytest.mark.escnn
@pytest.mark.slow
def test_gated_preset_transfers_exactly_between_the_backends():
    pytest.importorskip("escnn")
    config = CONFIGS / "e2sfcnn_rotmnist_d4_gated.yaml"
    args = ["compare", str(config), "--backends", "native,escnn", "--json", "--repeats", "1", "--timing-batch", "2"]
    args += ["--set", "model.width_multiplier=0.25", "--set", "model.backend=escnn"]
    args += ["--set", "model.backend_options={basis: complete}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] and report["transfer_max_rel_error"] <= TOL


# ------------------------------------------------------------------------------ width_multiplier
def test_width_multiplier_scales_every_field_count_but_not_the_classes():
    layers = [{"type": "lift", "out": 8}, {"type": "gconv", "out": "classes"}, "group_pool", "global_pool"]
    layers.append({"type": "linear", "out": "classes"})

    def fields(multiplier):
        net = build_model("native", "C4", layers=layers, in_channels=1, image_size=9, num_classes=3,
                          width_multiplier=multiplier)  # fmt: skip
        return [out.channels for name, _, _, out in net.typed_layers() if name.endswith(("lift", "gconv"))]

    assert fields(1.0) == [8, 3]
    assert fields(0.5) == [4, 3]
    assert fields(0.01) == [1, 3]  # at least one field
    assert fields(2.5) == [20, 3]


def test_width_multiplier_in_params_mode_scales_after_the_budget():
    base = _build("e2sfcnn", "C1").num_parameters()
    assert _build("e2sfcnn", "C1", multiplier=1.0).num_parameters() == base
    assert _build("e2sfcnn", "C1", multiplier=0.5).num_parameters() < base / 3


@pytest.mark.parametrize("bad", [0, -1, 17, float("nan")])
def test_width_multiplier_out_of_range_is_refused(bad):
    with pytest.raises(ConfigError, match="model.width_multiplier: (must be > 0 and <= 16|expected a finite number)"):
        Config.from_dict({"model": {"width_multiplier": bad}})
    with pytest.raises(SpecError, match="model.width_multiplier"):
        _build("e2sfcnn", "C1", multiplier=bad)


@settings(max_examples=200, deadline=None)
@given(
    counts=st.lists(st.integers(1, 64), min_size=1, max_size=4),
    multiplier=st.floats(0.01, 4.0, allow_nan=False),
    gated=st.booleans(),
)
def test_scaled_counts_keep_one_gate_per_gated_field(counts, multiplier, gated):
    names = ["regular", "irrep(1)", "quotient(2)", "irrep(2)"][: len(counts)]
    out = dict(zip(names, counts, strict=True))
    if gated:
        out = {"trivial": sum(counts), **out}
    scaled = scaled_counts(out, multiplier)
    assert list(scaled) == list(out) and all(c >= 1 for c in scaled.values())
    for name in names:
        assert scaled[name] == max(1, round(out[name] * multiplier))
    if gated:
        assert scaled["trivial"] == sum(scaled[name] for name in names)


# ------------------------------------------------------------------------------ restrict: rotations
@pytest.mark.parametrize(("group", "subgroup"), [("D4", "C4"), ("D2", "C2"), ("D1", "C1")])
def test_restrict_to_rotations_names_the_rotation_subgroup(group, subgroup):
    layers = [{"type": "lift", "out": 2}, {"type": "restrict", "subgroup": "rotations"}, "group_pool", "global_pool"]
    net = build_model("native", group, layers=layers, in_channels=1, image_size=9, num_classes=2)
    assert net.symmetry(len(net.layer_names()) - 1)[0].name == subgroup


def test_restrict_to_rotations_on_a_rotation_group_is_refused():
    layers = [{"type": "lift", "out": 2}, {"type": "restrict", "subgroup": "rotations"}, "group_pool", "global_pool"]
    with pytest.raises(SpecError, match="'rotations' needs a group with reflections .* C4 has no reflections"):
        build_model("native", "C4", layers=layers, in_channels=1, image_size=9, num_classes=2)


# ------------------------------------------------------------------------------ the committed configs
E2SFCNN_CONFIGS = sorted(p.name for p in CONFIGS.glob("e2sfcnn_*.yaml"))


def test_every_steerable_preset_has_a_committed_config():
    import yaml

    presets = {yaml.safe_load((CONFIGS / name).read_text())["model"]["preset"] for name in E2SFCNN_CONFIGS}
    assert presets == set(STEERABLE_PRESETS)


@pytest.mark.parametrize("name", E2SFCNN_CONFIGS)
def test_committed_config_trains_from_the_cli_at_a_quarter_width(name, mnist_root, tmp_path):
    config = CONFIGS / name
    if "backend: escnn" in config.read_text():
        pytest.importorskip("escnn")
    out = tmp_path / "run"
    small = ["--set", "data.train_size=64", "--set", "data.test_size=32", "--set", "train.epochs=1"]
    args = ["train", str(config), "--set", f"data.root={mnist_root}", "--set", "model.width_multiplier=0.25"]
    args += [*small, "--set", "device=cpu", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preset"].startswith("e2sfcnn") and summary["epochs"] == 1
    assert all(0.0 <= a <= 1.0 for a in summary["accuracy"].values())
