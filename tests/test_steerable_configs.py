"""The committed steerable configs (issue 11): configs/d4_steerable.yaml builds and passes `gcnnkit check`
on both backends and transfers exactly between them layer by layer (`gcnnkit compare --json`);
configs/so2_steerable.yaml passes its check (per sampled angle), trains on escnn, and the native backend
refuses it in one line with exit code 2."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pytest.importorskip("escnn")

from conftest import CONFIGS  # noqa: E402

from gcnnkit.cli import main  # noqa: E402

pytestmark = pytest.mark.escnn

D4 = CONFIGS / "d4_steerable.yaml"
SO2 = CONFIGS / "so2_steerable.yaml"
NATIVE = ["--set", "model.backend=native", "--set", "model.backend_options={}"]
TOL = 1e-5


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_so2_on_the_native_backend_is_refused_in_one_line():
    result = invoke("check", SO2, "--set", "model.backend=native")
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1
    assert result.output.startswith("error: backend 'native' does not support group SO2: it is continuous")
    assert "model.backend=escnn" in result.output


def test_so2_passes_its_check_with_an_error_per_sampled_angle():
    result = invoke("check", SO2, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] and report["continuous"] and report["group"] == "SO2"
    angles = report["per_angle"]
    assert list(angles)[:5] == ["e", "22.5°", "45°", "67.5°", "90°"] and len(angles) == 16
    for angle in ("90°", "180°", "270°"):  # exact on the pixel grid: judged
        assert angles[angle] <= TOL
    assert all(0 < angles[a] < 0.2 for a in angles if a not in ("e", "90°", "180°", "270°"))  # interpolated
    kinds = {layer["out_type"] for layer in report["layers"]}
    assert any("irrep_1" in k for k in kinds)


@pytest.mark.slow
def test_so2_trains_on_escnn(tmp_path):
    from gcnnkit.run import rundir

    run = tmp_path / "so2"
    small = ["--set", "data.train_size=64", "--set", "data.test_size=32", "--set", "train.epochs=1"]
    result = invoke("train", SO2, "--out", run, "--set", "device=cpu", *small, "--set", "eval.protocols=[upright]")
    assert result.exit_code == 0, result.output
    summary = json.loads((run / rundir.SUMMARY_FILE).read_text())
    assert summary["backend"] == "escnn" and summary["epochs"] == 1
    assert 0.0 <= summary["accuracy"]["upright"] <= 1.0


@pytest.fixture(scope="module")
def d4_compare():
    result = invoke("compare", D4, "--backends", "native,escnn", "--json", "--repeats", "1", "--timing-batch", "2")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.slow
def test_d4_steerable_transfers_exactly_layer_by_layer(d4_compare):
    report = d4_compare
    assert report["passed"] and report["transfer_max_rel_error"] <= TOL
    assert sorted(report["exact_transfers"]) == ["escnn->native", "native->escnn"]
    names = [layer["name"] for layer in report["layers"]]
    for kind in ("lift", "norm_act", "gconv", "gated", "restrict", "batchnorm", "group_pool"):
        assert any(n.endswith("." + kind) for n in names), kind
    for layer in report["layers"]:
        for direction, error in layer["transfer"].items():
            assert error <= TOL, (layer["name"], direction, error)
        for backend, stats in layer["backends"].items():
            assert stats["equivariance_exact"] <= TOL, (layer["name"], backend)
    types = " ".join(layer["out_type"] for layer in report["layers"])
    for field in ("regular", "quotient[(None, 2)]", "irrep_1,1", "trivial", "regular|C4", "irrep_1,1|C4"):
        assert field in types
    convs = [layer for layer in report["layers"] if "conv" in layer["name"] or "lift" in layer["name"]]
    assert all(c["backends"]["native"]["params"] == c["backends"]["escnn"]["params"] for c in convs)
    # every layer, batch norm included (no unused shift on the irrep fields): 2,826 parameters on both
    assert all(
        layer["backends"]["native"]["params"] == layer["backends"]["escnn"]["params"] for layer in report["layers"]
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend", [[], NATIVE], ids=["escnn", "native"])
def test_d4_steerable_passes_check_on_both_backends(backend):
    result = invoke("check", D4, *backend, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] and report["max_rel_error"] <= TOL
    assert report["backend"] == ("native" if backend else "escnn")
