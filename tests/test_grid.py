"""Grid symmetry (gcnnkit.models.grid): the build-time condition agrees with the measured equivariance.

A stride or pool that samples the grid off its centre is refused at build time; with
``model.allow_non_equivariant: true`` it is built and ``gcnnkit check`` measures it as broken.
The property tests draw image sizes, kernels, strides, paddings and dilations and check that
the condition ``(n + 2p − d(k − 1) − 1) mod s == 0`` says exactly which layers pass the check.
"""

from __future__ import annotations

import pytest
from conftest import CONFIGS, TINY_CONFIG, merge
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gcnnkit.core.errors import DataError, SpecError
from gcnnkit.models.grid import Window, conv_output_size, grid_problem, is_centred, map_sizes, working_image_sizes
from gcnnkit.models.presets import get_preset
from gcnnkit.models.spec import parse_layers
from gcnnkit.run.check import check_equivariance
from gcnnkit.run.config import Config, load_config
from gcnnkit.run.data import dataset_info
from gcnnkit.run.rundir import build_model_from_config


def _config(layers, size: int, group: str = "C4", allow: bool = False) -> Config:
    model = {"preset": None, "layers": layers, "group": group, "allow_non_equivariant": allow}
    return Config.from_dict(merge(TINY_CONFIG, {"model": model, "data": {"name": "digits", "image_size": size}}))


@st.composite
def strided_nets(draw):
    """A lift (kernel, stride, padding, dilation) then a pool (kernel, stride, padding) on an n×n image."""
    n = draw(st.integers(8, 23))
    k = draw(st.sampled_from([1, 3, 5]))
    d = draw(st.sampled_from([1, 2]))
    s = draw(st.sampled_from([1, 2, 3]))
    p = draw(st.integers(0, 2))
    m = conv_output_size(n, k, s, p, d)
    pk = draw(st.integers(1, 3))
    ps = draw(st.sampled_from([1, 2, 3]))
    pp = draw(st.integers(0, pk // 2))
    layers = [
        {"type": "lift", "out": 2, "kernel": k, "stride": s, "padding": p, "dilation": d},
        {"type": "pool", "mode": "max", "kernel": pk, "stride": ps, "padding": pp},
        "group_pool",
        "global_pool",
        "linear",
    ]
    return n, layers, m


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(strided_nets(), st.sampled_from(["C4", "D4"]))
def test_condition_matches_the_measured_equivariance(case, group):
    n, layers, m = case
    if m < 1 or conv_output_size(m, layers[1]["kernel"], layers[1]["stride"], layers[1]["padding"]) < 1:
        return  # the map shrinks to nothing: refused for that reason (tested below)
    lift_ok = is_centred(n, layers[0]["kernel"], layers[0]["stride"], layers[0]["padding"], layers[0]["dilation"])
    pool_ok = Window.of(parse_layers(layers)[1]).centred(m)  # is_centred, or one window over the whole map
    report = check_equivariance(_config(layers, n, group, allow=True), elements="exact")
    by_name = {r.name: r for r in report.results}
    assert (by_name["0.lift"].max_exact_error <= 1e-5) == lift_ok, (n, layers, by_name["0.lift"].max_exact_error)
    assert (by_name["1.pool"].max_exact_error <= 1e-5) == pool_ok, (m, layers, by_name["1.pool"].max_exact_error)
    problem = grid_problem(parse_layers(layers), n, group, 8)
    assert (problem is None) == (lift_ok and pool_ok)
    if problem is not None:
        with pytest.raises(SpecError, match="model.allow_non_equivariant: true"):
            build_model_from_config(_config(layers, n, group))


@settings(max_examples=40, deadline=None)
@given(st.integers(8, 64))
def test_suggested_image_sizes_work(n):
    specs = parse_layers([{"type": "lift", "out": 2, "stride": 2}, {"type": "pool", "kernel": 2}, "global_pool"])
    for size in working_image_sizes(specs, n):
        assert grid_problem(specs, size, "C4", 4) is None and map_sizes(specs, size)[-1] >= 1


def test_refusal_names_layer_size_and_fix():
    layers = [{"type": "lift", "out": 2}, {"type": "pool", "kernel": 2}, "group_pool", "global_pool", "linear"]
    with pytest.raises(SpecError) as info:
        build_model_from_config(_config(layers, 17))
    message = str(info.value)
    assert "\n" not in message
    parts = ("layer 1 (pool)", "kernel 2, stride 2", "17×17", "C4-equivariant", "image sizes that work: 14, 16, 18")
    for part in parts:
        assert part in message, message
    assert build_model_from_config(_config(layers, 16)) is not None  # even size: centred
    assert build_model_from_config(_config(layers, 17, group="C1")) is not None  # a plain CNN: no symmetry to keep


def test_strided_conv_on_even_map_is_refused():
    layers = [{"type": "lift", "out": 2, "stride": 2}, "group_pool", "global_pool", "linear"]
    with pytest.raises(SpecError, match=r"layer 0 \(lift\): kernel 3, stride 2, padding 1 on a 16×16 map"):
        build_model_from_config(_config(layers, 16))
    assert build_model_from_config(_config(layers, 17)) is not None


def test_every_committed_config_keeps_its_grid_centred():
    for path in sorted(CONFIGS.glob("*.yaml")):
        config = load_config(path)
        try:
            channels = dataset_info(config.data).in_channels
        except DataError:  # an example config whose images are not here (folder_example.yaml)
            continue
        m = config.model
        layers = m.layers if m.preset is None else get_preset(m.preset).layers(config.data.image_size, channels)
        assert grid_problem(parse_layers(layers), config.data.image_size, m.group, 2) is None, path.name


def test_check_names_exact_and_approximate_elements(tmp_path):
    """C5 holds exactly only at e; C8 at its rot90 subgroup; both say so, and which elements are approximate."""
    import json

    import yaml
    from click.testing import CliRunner

    from gcnnkit.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(TINY_CONFIG))
    for group, exact, approx in (("C5", "e", "r1, r2, r3, r4"), ("C8", "e, r2, r4, r6", "r1, r3, r5, r7")):
        result = CliRunner().invoke(main, ["check", str(path), "--set", f"model.group={group}"])
        assert result.exit_code == 0, result.output
        last = result.stdout.splitlines()[-2:]
        assert last[0].startswith(f"exactly equivariant at {exact}: worst relative error"), last
        assert last[1].startswith(f"only approximately equivariant at {approx} (rotations off the pixel grid"), last
        data = json.loads(
            CliRunner().invoke(main, ["check", str(path), "--set", f"model.group={group}", "--json"]).stdout
        )
        assert ", ".join(data["exact_elements"]) == exact and ", ".join(data["interpolated_elements"]) == approx
    result = CliRunner().invoke(main, ["check", str(path), "--set", "model.group=C8", "--elements", "exact"])
    assert result.stdout.splitlines()[-1].startswith("not measured (--elements exact): r1, r3, r5, r7")
