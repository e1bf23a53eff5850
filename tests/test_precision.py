"""train.mixed_precision: auto picks bf16 where it is fast, the choice is printed and saved, resume keeps it."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_CONFIG, merge

from gcnnkit.core.errors import ConfigError
from gcnnkit.run import precision as prec
from gcnnkit.run.config import Config
from gcnnkit.run.rundir import CHECKPOINT_FILE, SUMMARY_FILE, load_checkpoint
from gcnnkit.run.training import train

CPU = torch.device("cpu")


@pytest.fixture
def amx(monkeypatch):
    """Pretend the CPU has (True) or lacks (False) AMX."""

    def set_flags(present: bool) -> None:
        monkeypatch.setattr(prec, "_cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"} if present else {"avx2"}))

    return set_flags


def test_auto_is_bf16_on_a_cpu_with_bf16_instructions_and_fp32_without(amx, monkeypatch):
    amx(True)
    assert prec.resolve_precision("auto", CPU) == ("bf16", "auto: the CPU has AMX (amx_bf16)")
    monkeypatch.setattr(prec, "_cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert prec.resolve_precision("auto", CPU) == ("bf16", "auto: the CPU has AVX-512 BF16 (avx512_bf16)")
    amx(False)
    assert prec.resolve_precision("auto", CPU) == ("none", "auto: no fast bf16 on cpu")


def test_explicit_modes_are_kept_and_fp16_needs_cuda(amx):
    amx(False)
    assert prec.resolve_precision("bf16", CPU) == ("bf16", "as configured")
    assert prec.resolve_precision("none", CPU) == ("none", "as configured")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device, but the device is cpu; use bf16, auto or none"):
        prec.resolve_precision("fp16", CPU)


def test_precision_runs_the_forward_pass_in_its_dtype(amx):
    amx(True)
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    for mode, dtype in (("auto", torch.bfloat16), ("none", torch.float32)):
        p = prec.Precision.for_config(mode, CPU)
        with p.autocast():
            assert lin(x).dtype == dtype, mode


def _tiny(mode: str) -> Config:
    return Config.from_dict(merge(TINY_CONFIG, {"train": {"epochs": 2, "mixed_precision": mode}}))


def test_the_choice_is_printed_saved_and_kept_on_resume(tmp_path, amx):
    amx(True)
    lines: list[str] = []
    config = _tiny("auto")
    short = Config.from_dict(merge(TINY_CONFIG, {"train": {"epochs": 1, "mixed_precision": "auto"}}))
    train(short, tmp_path / "run", log=lines.append)
    assert "bf16 (auto: the CPU has AMX (amx_bf16))" in lines[0]
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)["precision"] == "bf16"
    amx(False)  # the machine changed: the resumed run keeps the precision it started with
    lines.clear()
    summary = train(config, tmp_path / "run", resume=True, log=lines.append)
    assert "bf16 (auto, as when the run started)" in lines[1]
    assert summary.precision == "bf16"
    assert json.loads((tmp_path / "run" / SUMMARY_FILE).read_text())["precision"] == "bf16"


def test_fp32_runs_say_so(tmp_path, amx):
    amx(False)
    summary = train(_tiny("auto"), tmp_path / "run", log=None)
    assert summary.precision == "fp32"
