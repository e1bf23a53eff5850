"""Resource estimates (gcnnkit.run.resources): counted from the spec alone, they match what is built."""

from __future__ import annotations

import pytest
from conftest import TINY_CONFIG, merge

from gcnnkit.core.errors import ConfigError
from gcnnkit.run.config import Config
from gcnnkit.run.data import dataset_info
from gcnnkit.run.resources import check_memory, check_time, config_estimate
from gcnnkit.run.rundir import build_model_from_config


def _config(**model) -> Config:
    return Config.from_dict(merge(TINY_CONFIG, {"model": model}))


@pytest.mark.parametrize("preset", ["gcnn-tiny", "gcnn-small"])
@pytest.mark.parametrize("group", ["C1", "C4", "D4", "C8"])
def test_parameter_count_is_exact_on_native_and_an_upper_bound_on_escnn(preset, group):
    config = _config(preset=preset, group=group)
    info = dataset_info(config.data)
    model = build_model_from_config(config, info)
    est = config_estimate(config, info, model.group.order)
    assert est.parameters == model.num_parameters()
    banks = sum(
        layer.filter_bank().numel() for layer in model.layers if hasattr(layer, "filter_bank")
    )  # the expanded [F_out·|G|, C_in(·|G|), k, k] kernels
    assert banks == 0 or banks == est.filter_banks
    pytest.importorskip("escnn")
    escnn = build_model_from_config(_config(preset=preset, group=group, backend="escnn"), info)
    assert escnn.num_parameters() <= est.parameters


def test_activation_count_matches_a_forward_pass():
    import torch

    config = _config(preset="gcnn-small", group="C4")
    info = dataset_info(config.data)
    model = build_model_from_config(config, info).eval()
    est = config_estimate(config, info, 4)
    x, total = torch.zeros(1, *info.image_shape), 0
    with torch.no_grad():
        for layer in model.layers:
            x = layer(x)
            total += x.numel()
    assert est.activations == total


def test_refusals_name_estimate_limit_and_variable(monkeypatch):
    config = _config(preset="gcnn-small", group="C4")
    info = dataset_info(config.data)
    est = config_estimate(config, info, 4)
    monkeypatch.setenv("GCNNKIT_MAX_MEMORY_GB", "0.001")
    with pytest.raises(
        ConfigError, match=r"training needs about .* GB .*more than the limit of 0.001 GB.*GCNNKIT_MAX_MEMORY_GB="
    ):
        check_memory(est, batch=64, training=True, what="training")
    monkeypatch.setenv("GCNNKIT_MAX_MEMORY_GB", "inf")
    check_memory(est, batch=64, training=True, what="training")
    monkeypatch.setenv("GCNNKIT_MAX_CHECK_SECONDS", "0.01")
    with pytest.raises(ConfigError, match=r"check: measuring 4 group elements .*GCNNKIT_MAX_CHECK_SECONDS="):
        check_time(est)
    assert est.memory_bytes(64, training=True) > est.memory_bytes(64, training=False)
    assert config_estimate(config, info, 64).check_seconds() > 10 * est.check_seconds()
