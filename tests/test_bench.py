"""The benchmark harness (floor, report, CLI) and the native speed work it measures: one-gather
filter banks, the eval-mode cache and its invalidation, torch.compile without graph breaks.

No test asserts a timing: the machine is shared, so only the structure of the reports is checked.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_user_error
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from gcnnkit.cli import main
from gcnnkit.core.errors import GcnnkitError
from gcnnkit.core.registry import get_group
from gcnnkit.models.network import build_model
from gcnnkit.tools.bench import (
    EXPORT,
    FLOOR,
    BenchCase,
    config_cases,
    format_report,
    peak_memory,
    preset_cases,
    resolve_device,
    run_bench,
    summary_table,
)
from gcnnkit.tools.export import floor_model

GCONV_LAYERS = ("lift", "gconv")


def tiny(group: str = "C4", size: int = 12) -> nn.Module:
    torch.manual_seed(0)
    return build_model("native", group, preset="gcnn-tiny", in_channels=1, image_size=size, num_classes=10)


# ---------------------------------------------------------------------------------- floor
@pytest.mark.parametrize("group", ["C1", "C4", "D4"])
def test_floor_has_the_expanded_shapes_of_the_network(group):
    torch.manual_seed(0)
    net = build_model("native", group, preset="gcnn-small", in_channels=1, image_size=28, num_classes=10)
    floor = floor_model(net)
    n = get_group(group).order
    convs = [m for m in floor if isinstance(m, nn.Conv2d)]
    banks = [layer.filter_bank() for layer in net.layers if hasattr(layer, "filter_bank")]
    assert [c.weight.shape for c in convs] == [b.shape for b in banks]
    norms = [m for m in floor if isinstance(m, nn.BatchNorm2d)]
    fields = [layer.num_features for layer in net.layers if isinstance(layer, nn.modules.batchnorm._BatchNorm)]
    assert [m.num_features for m in norms] == [f * n for f in fields]
    x = torch.randn(2, 1, 28, 28)
    assert floor(x).shape == net(x).shape == (2, 10)
    # the floor is untied: |G|× the weights of each group convolution (|G|² / |G| for gconv)
    assert sum(c.weight.numel() for c in convs) == sum(b.numel() for b in banks)


def test_floor_exists_for_every_preset():
    from gcnnkit.core.registry import get_backend, get_group
    from gcnnkit.models.presets import PRESETS

    native = get_backend("native")
    for name, preset in PRESETS.items():
        size = getattr(preset, "image_size", None) or 28
        group = getattr(preset, "group", None) or "C4"
        backend = "native"
        if name == "e2sfcnn-restrict" and group == "D16":  # native restricts exact groups only
            group = "D4"
        elif native.supports(get_group(group)) is not None:
            pytest.importorskip("escnn")  # e2sfcnn-irreps: SO(2) is built by escnn only
            backend = "escnn"
        net = build_model(backend, group, preset=name, in_channels=1, image_size=size, num_classes=10)
        x = torch.randn(1, 1, size, size)
        with torch.no_grad():
            assert floor_model(net).eval()(x).shape == net.eval()(x).shape == (1, 10), name


# ------------------------------------------------------------------------------ measuring
def test_peak_memory_on_cpu_counts_live_tensors_at_the_peak():
    n = 1 << 18  # 1 MiB of float32

    def fn():
        a = torch.ones(n)
        b = a * 2  # 2 MiB alive
        del a
        c = b + 1  # 2 MiB alive again, never 3
        return c.sum()

    peak = peak_memory(fn, torch.device("cpu"))
    assert 2 * 4 * n <= peak < 3 * 4 * n


def test_device_errors_are_one_line():
    with pytest.raises(GcnnkitError, match="allowed: cpu, cuda, cuda:N"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(GcnnkitError, match=r"--device .cuda. is not available \(no CUDA device found") as info:
            resolve_device("cuda")
        assert "\n" not in str(info.value)


def test_precisions_time_every_contender_in_each_against_the_fp32_floor():
    cases = preset_cases(["gcnn-tiny"], "C4", ["native"])
    report = run_bench(
        cases, batch_sizes=[2], sizes=[12], repeats=1, warmup=0, min_time=0.0, build_repeats=1, per_layer=False,
        precisions=["bf16"],
    )  # fmt: skip
    (entry,) = report["results"]
    assert entry["precisions"] == ["fp32", "bf16"] == report["settings"]["precisions"]  # fp32: the floor
    assert set(entry["ratio_to_floor"]) == {"native", EXPORT, "floor@bf16", "native@bf16", f"{EXPORT}@bf16"}
    assert set(entry["ratio_to_floor"]["native@bf16"]) == {"eval", "train"}
    assert entry["peak_memory_bytes"]["train"]["native@bf16"] < entry["peak_memory_bytes"]["train"]["native"]
    text = format_report(report)
    assert "native bf16" in text and "floor bf16" in text and "export (native) bf16" in text
    for bad in (["fp8"], [], ["bf16", "bf16"]):
        with pytest.raises(GcnnkitError, match="--precisions: .* is not allowed; allowed: distinct values of fp32"):
            run_bench(cases, batch_sizes=[2], sizes=[12], precisions=bad)
    with pytest.raises(GcnnkitError, match="fp16 needs a CUDA device"):
        run_bench(cases, batch_sizes=[2], sizes=[12], precisions=["fp16"])


def test_report_has_ratios_per_contender_and_mode_and_per_layer():
    cases = preset_cases(["gcnn-tiny"], "C4", ["native"])
    report = run_bench(cases, batch_sizes=[2], sizes=[12], repeats=2, warmup=1, min_time=0.0, build_repeats=1)
    json.dumps(report)  # JSON-able
    assert report["device"] == "cpu" and report["settings"]["repeats"] == 2
    (entry,) = report["results"]
    assert (entry["model"], entry["group"], entry["image_size"], entry["batch_size"]) == ("gcnn-tiny", "C4", 12, 2)
    assert entry["backends"] == ["native"] and entry["export_of"] == "native"
    assert set(entry["ratio_to_floor"]) == {"native", EXPORT}
    assert set(entry["ratio_to_floor"]["native"]) == {"eval", "train"}
    assert set(entry["ratio_to_floor"][EXPORT]) == {"eval"}
    q1, q3 = entry["ratio_quartiles"]["native"]["train"]
    assert q1 <= entry["ratio_to_floor"]["native"]["train"] <= q3
    for mode in ("eval", "train"):
        assert entry["time_s"][mode][FLOOR] > 0 and entry["time_s"][mode]["native"] > 0
        assert entry["peak_memory_bytes"][mode]["native"] > 0
    assert set(entry["build_time_s"]) == {"native", FLOOR, EXPORT}
    assert set(entry["build_time_first_s"]) == {"native"} and entry["build_time_first_s"]["native"] > 0
    names = [layer["name"] for layer in entry["layers"]]
    assert names == tiny().layer_names()
    lift = entry["layers"][0]
    assert set(lift["ratio_to_floor"]["native"]) == {"eval", "train"} and lift["ratio_to_floor"]["native"]["train"] > 0
    text = format_report(report)
    assert "gcnn-tiny on C4, 12x12, batch 2" in text and "0.lift" in text
    table = summary_table(report)
    assert "| native eval | native train | export eval | native memory (train) |" in table
    assert "\n| gcnn-tiny | C4 | 12 | 2 | " in table


@pytest.mark.escnn
def test_both_backends_in_one_report_if_escnn_is_installed():
    pytest.importorskip("escnn")
    cases = preset_cases(["gcnn-tiny"], "C4", ["native", "escnn"])
    report = run_bench(cases, batch_sizes=[2], sizes=[8], repeats=1, warmup=1, min_time=0.0, build_repeats=1)
    (entry,) = report["results"]
    assert entry["backends"] == ["native", "escnn"]
    assert set(entry["ratio_to_floor"]["escnn"]) == {"eval", "train"}
    assert all(set(layer["ratio_to_floor"]) == {"native", "escnn"} for layer in entry["layers"])


def test_backends_that_refuse_the_group_are_skipped():
    from gcnnkit.core.registry import REGISTRY, get_backend, register_backend

    class Picky(type(get_backend("native"))):
        def supports(self, group):
            return "only C4" if group.name != "C4" else None

    register_backend("picky-test", Picky())
    try:
        cases = preset_cases(["gcnn-tiny"], "D2", ["native", "picky-test"])
        report = run_bench(
            cases, batch_sizes=[1], sizes=[8], repeats=1, warmup=0, per_layer=False, memory=False, export=False
        )
    finally:
        REGISTRY.unregister("backend", "picky-test")
    assert report["results"][0]["backends"] == ["native"]
    assert report["skipped"][0]["backend"] == "picky-test" and "only C4" in report["skipped"][0]["reason"]


def test_config_cases_use_the_data_sets_shape(tiny_config):
    (case,) = config_cases([str(tiny_config)])
    assert isinstance(case, BenchCase)
    assert (case.group, case.image_size, case.in_channels, case.num_classes) == ("C4", 17, 1, 10)
    assert case.backends == ["native"] and case.preset == "gcnn-tiny"


# --------------------------------------------------------------------------------- command
def test_cli_bench_json(tiny_config):
    args = [
        "bench",
        str(tiny_config),
        "--batch-sizes",
        "2",
        "--repeats",
        "1",
        "--min-time",
        "0",
        "--no-per-layer",
        "--json",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (entry,) = report["results"]
    assert entry["image_size"] == 17 and entry["model"] == "tiny"
    assert set(entry["ratio_to_floor"]["native"]) == {"eval", "train"}
    assert "layers" not in entry


def test_cli_bench_channels_last_runs_every_contender_nhwc(tiny_config, monkeypatch):
    import gcnnkit.tools.bench as bench

    seen = []
    original = bench._interleaved

    def spy(contenders, mode, st):
        seen.extend((c.name, c.module, c.x) for c in contenders)
        return original(contenders, mode, st)

    monkeypatch.setattr(bench, "_interleaved", spy)
    args = ["bench", str(tiny_config), "--batch-sizes", "2", "--repeats", "1", "--min-time", "0", "--no-per-layer"]
    args.append("--channels-last")
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["settings"]["channels_last"] is True
    assert report["results"][0]["ratio_to_floor"]["native"]["train"] > 0
    names = {name for name, _, _ in seen}
    assert names == {FLOOR, "native", EXPORT}
    for name, module, x in seen:
        assert x.is_contiguous(memory_format=torch.channels_last), name
        if name == "native":
            assert module.channels_last
        else:
            convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
            assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs), name


def test_cli_bench_presets_table(tmp_path):
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "--presets",
        "gcnn-tiny",
        "--batch-sizes",
        "1",
        "--sizes",
        "8",
        "--repeats",
        "1",
        "--min-time",
        "0",
    ]
    result = CliRunner().invoke(main, [*args, "--backends", "native", "--no-export", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "gcnn-tiny on C4, 8x8, batch 1" in result.stdout and "per layer" in result.stdout
    assert json.loads(out.read_text())["results"][0]["export_of"] is None


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        (["--device", "tpu"], ["--device", "allowed: cpu, cuda"]),
        (["--batch-sizes", "0,4"], ["--batch-sizes", "positive"]),
        (["--sizes", "a"], ["--sizes"]),
        (["--presets", "huge"], ["unknown preset 'huge'"]),
        (["--backends", "nope", "--presets", "gcnn-tiny", "--sizes", "8", "--batch-sizes", "1"], ["nope"]),
    ],
)
def test_cli_bench_errors_are_one_line(args, parts):
    assert_user_error(CliRunner().invoke(main, ["bench", *args]), *parts)


def test_cli_bench_missing_cuda_device_is_one_line():
    if torch.cuda.is_available():  # one past the last GPU
        missing, hint = f"cuda:{torch.cuda.device_count()}", "does not exist"
    else:
        missing, hint = "cuda", "--device cpu"
    assert_user_error(CliRunner().invoke(main, ["bench", "--device", missing]), f"--device '{missing}'", hint)


# ----------------------------------------------------------------------- native speed work
class OpLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("group", ["C4", "D4"])
def test_exact_filter_banks_are_one_gather_whatever_the_size(group):
    from gcnnkit_native.layers import GroupConv, LiftingConv

    g = get_group(group)
    for cls in (LiftingConv, GroupConv):
        logs = []
        for fields in (1, 7):
            layer = cls(g, fields, 3, 3)
            with OpLog() as log:
                layer._expand()
            logs.append(log.ops)
        assert logs[0] == logs[1]  # no work per element or per channel in Python
        assert logs[0].count("index_select") == 1
        assert set(logs[0]) <= {"index_select", "view", "reshape", "_unsafe_view"}, logs[0]


def test_eval_cache_expands_once_and_follows_weight_and_bias_changes(monkeypatch):
    from gcnnkit_native.layers import GroupConv

    layer = GroupConv(get_group("D4"), 2, 3, 3, padding=1).eval()
    calls = []
    original = type(layer)._expand
    monkeypatch.setattr(type(layer), "_expand", lambda self: calls.append(1) or original(self))
    x = torch.randn(2, 2, 8, 7, 7)

    def reference():
        bank = original(layer).detach()
        bias = layer.bias.detach().repeat_interleave(8)
        y = torch.nn.functional.conv2d(x.reshape(2, 16, 7, 7), bank, bias, padding=1)
        return y.reshape(2, 3, 8, 7, 7)

    with torch.no_grad():
        layer(x)
        layer(x)
        assert len(calls) == 1  # cached
        layer.bias.add_(1.0)  # a bias change alone invalidates the cached bias
        assert torch.allclose(layer(x), reference(), atol=1e-6) and len(calls) == 2
        layer.load_state_dict({k: torch.randn_like(v) for k, v in layer.state_dict().items()})
        assert torch.allclose(layer(x), reference(), atol=1e-6)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x).square().mean().backward()  # eval with grad: not cached, differentiable
    opt.step()
    with torch.no_grad():
        assert torch.allclose(layer(x), reference(), atol=1e-6)
        assert layer.filter_bank() is layer.filter_bank()


def test_export_hook_is_the_filter_bank_as_a_conv():
    from gcnnkit_native.layers import GroupConv

    layer = GroupConv(get_group("C4"), 2, 3, 3, stride=2, padding=1, dilation=1)
    with torch.no_grad():
        layer.bias.normal_()
    conv = layer.export_plain()
    assert isinstance(conv, nn.Conv2d) and (conv.stride, conv.padding) == ((2, 2), (1, 1))
    assert torch.equal(conv.weight, layer.filter_bank().detach()) and conv.weight.requires_grad
    assert torch.equal(conv.bias, layer.bias.detach().repeat_interleave(4))
    assert conv.weight.data_ptr() != layer.weight.data_ptr()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_native_models_compile_without_graph_breaks(mode):
    torch._dynamo.reset()
    try:
        net = tiny("D4").train(mode == "train")
        x = torch.randn(2, 1, 12, 12)
        with torch.set_grad_enabled(mode == "train"):
            explanation = torch._dynamo.explain(net)(x)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
        if mode == "train":
            torch.manual_seed(1)
            y = compiled(x)
            y.square().sum().backward()
            grads = [p.grad.clone() for p in net.parameters()]
            net.zero_grad()
            torch.manual_seed(1)
            net(x).square().sum().backward()  # the same batch statistics and dropout mask
            for a, b in zip(grads, (p.grad for p in net.parameters()), strict=True):
                assert torch.allclose(a, b, atol=1e-5)
        else:
            with torch.no_grad():
                assert torch.allclose(compiled(x), net(x), atol=1e-6)
                assert net.layers[0]._cache is not None  # eager call cached; the compiled one did not touch it
    finally:
        torch._dynamo.reset()


@pytest.mark.slow
def test_native_models_compile_with_inductor():
    torch._dynamo.reset()
    try:
        net = tiny("C4").eval()
        compiled = torch.compile(net, fullgraph=True)
        x = torch.randn(2, 1, 12, 12)
        with torch.no_grad():
            assert torch.allclose(compiled(x), net(x), atol=1e-5)
        net.train()
        compiled(x).sum().backward()
        assert all(p.grad is not None for p in net.parameters())
    finally:
        torch._dynamo.reset()
