"""The backend conformance suite (``gcnnkit.testing.assert_backend_conforms``): both shipped backends
pass it, and deliberately broken backends fail it with a message naming the problem.

Each broken backend is the native backend with one promise broken; it is checked on one small group,
and the test asserts which layers fail and why (and that nothing else does).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from gcnnkit_native.backend import NativeBackend
from gcnnkit_native.layers import GroupConv, LiftingConv
from torch import nn

from gcnnkit.core.backend import ACTIVATIONS, BACKEND_API_VERSION
from gcnnkit.core.equivariance import equivariance_errors
from gcnnkit.core.errors import PluginError
from gcnnkit.core.fields import FieldType
from gcnnkit.core.layers import FieldLayerNorm, SpatialPool
from gcnnkit.core.registry import backend_names, get_backend, get_group, group_names
from gcnnkit.core.transforms import transform_image
from gcnnkit.testing import ConformanceError, ConformanceReport, assert_backend_conforms
from gcnnkit.testing.conformance import DEFAULT_GROUPS, layer_cases

FACTORIES = {
    "lifting_conv", "group_conv", "batch_norm", "group_pool", "activation", "dropout", "layer_norm",
    "spatial_pool", "global_pool", "orbit_pool", "linear",
    "residual",  # residual blocks composed of the factories above (identity and projection shortcuts)
}  # fmt: skip


def _default_groups() -> list[str]:
    installed = set(group_names())
    return [name for name in DEFAULT_GROUPS if name in installed]


def _check_report(report: ConformanceReport, groups: list[str]) -> None:
    assert report.groups == groups and report.failures == []
    assert len(report.results) == len(groups) * len(layer_cases())
    assert {r.layer.split("(")[0] for r in report.results} == FACTORIES
    for r in report.results:  # every layer was measured in both dtypes
        assert {"equivariance_float32", "equivariance_float64", "export_float32", "export_float64"} <= set(
            r.measurements
        ), r
    exact = [r for r in report.results if get_group(r.group).exact]
    assert max(r.measurements["equivariance_float64"] for r in exact) <= 1e-12


# --------------------------------------------------------------------------- the shipped backends
def test_native_backend_conforms():
    groups = _default_groups()
    assert groups[:6] == ["C1", "C2", "C4", "D1", "D2", "D4"]
    report = assert_backend_conforms(get_backend("native"))
    _check_report(report, groups)
    assert report.worst("transfer_residual") == 0.0  # it stores the transfer format
    print(report.summary())


@pytest.fixture
def escnn():
    pytest.importorskip("escnn")
    if "escnn" not in backend_names():
        pytest.skip("the escnn backend plugin (gcnnkit-escnn) is not installed")
    return get_backend("escnn")


@pytest.mark.escnn
def test_escnn_backend_conforms(escnn):
    groups = _default_groups()
    report = assert_backend_conforms(escnn)
    _check_report(report, groups)
    print(report.summary())


@pytest.mark.escnn
def test_escnn_backend_with_the_complete_basis_conforms(escnn):
    groups = [name for name in ("C4", "D4", "C8") if name in group_names()]
    report = assert_backend_conforms(escnn.with_options(basis="complete"), groups)
    _check_report(report, groups)
    exact = [r for r in report.results if get_group(r.group).exact]
    assert max(r.measurements["transfer_residual"] for r in exact) < 1e-6  # it spans the tied space
    print(report.summary())


# --------------------------------------------------------------------------- broken backends
def _failures(backend, group: str = "C2", blocks: bool = False) -> list[str]:
    """The failures of the factories' own layers, or with ``blocks`` those of the residual blocks the
    suite composes of them (which inherit a broken factory's failure)."""
    with pytest.raises(ConformanceError) as info:
        assert_backend_conforms(backend, [group])
    message = str(info.value)
    failures = info.value.report.failures
    assert message.startswith(f"backend {backend.name!r} does not conform to the backend contract")
    assert f"{len(failures)} failure(s)" in message.splitlines()[0]
    assert all(line in message for line in failures)
    return [line for line in failures if (", residual(" in line) == blocks]


def _only(failures: list[str], factory: str, check: str, problem: str) -> None:
    """Every failure is ``check`` of ``factory`` (group named) and says ``problem``."""
    assert failures, "the suite found nothing"
    for line in failures:
        assert line.startswith("group ") and f", {factory}(" in line, line
        assert f"): {check}: " in line and problem in line, line


class _UnpermutedGroupConv(GroupConv):
    """Transforms each filter spatially by ``h`` but forgets to permute its group axis by ``h⁻¹``."""

    def _expand(self):
        w = self.weight  # [out, C, |G|, k, k]
        bank = torch.stack([transform_image(w, self.group, h) for h in range(self.group.order)], dim=1)
        return bank.reshape(self.out_fields * self.group.order, -1, self.kernel_size, self.kernel_size)


class UnpermutedBackend(NativeBackend):
    name = "unpermuted"

    def group_conv(self, group, in_type, out_fields, kernel_size, stride=1, padding=0, dilation=1, bias=True):
        return _UnpermutedGroupConv(group, in_type.channels, out_fields, kernel_size, stride, padding, dilation, bias)


def test_a_group_conv_bank_without_the_group_permutation_is_caught():
    failures = _failures(UnpermutedBackend(), "C4")
    _only(failures, "group_conv", "equivariance", "not equivariant in float32, eval mode: relative error")
    assert len(failures) == 4  # each group_conv variant, and nothing else
    assert "group C4, group_conv(group[2], out_fields=3, kernel_size=3, stride=1" in failures[0]
    blocks = _failures(UnpermutedBackend(), "C4", blocks=True)  # every residual block has a group conv
    assert len(blocks) == 3 and all("): equivariance: not equivariant" in line for line in blocks), blocks


class _AffineLessExportLayerNorm(FieldLayerNorm):
    def export_plain(self):
        return nn.GroupNorm(1, self.channels * self.order, eps=self.eps, affine=False)  # drops scale and shift


class OffExportBackend(NativeBackend):
    name = "off-export"

    def layer_norm(self, group, in_type, affine=True, eps=1e-5):
        order = group.order if in_type.kind == "group" else 1
        return _AffineLessExportLayerNorm(in_type.channels, order, affine, eps)


def test_an_export_that_is_off_is_caught():
    failures = _failures(OffExportBackend())
    _only(failures, "layer_norm", "export", "export_plain() differs from the layer (eval mode) on the flattened layout")
    assert len(failures) == 3 and not any("affine=False" in line for line in failures)


class _EvalBufferConv(LiftingConv):
    """Registers its expanded bank as a buffer in eval mode, as escnn's R2Conv does."""

    def train(self, mode=True):
        super().train(mode)
        if mode:
            self._buffers.pop("cached_bank", None)
        else:
            self.register_buffer("cached_bank", self._expand().detach())
        return self


class EvalBufferBackend(NativeBackend):
    name = "eval-buffer"

    def lifting_conv(self, group, in_type, out_fields, kernel_size, stride=1, padding=0, dilation=1, bias=True):
        return _EvalBufferConv(group, in_type.channels, out_fields, kernel_size, stride, padding, dilation, bias)


def test_a_state_dict_that_changes_in_eval_mode_is_caught():
    failures = _failures(EvalBufferBackend())
    _only(failures, "lifting_conv", "state_dict", "the state_dict changes in eval mode: it adds 'cached_bank' [6, 2,")
    assert len(failures) == 4


class _PerChannelBatchNorm(nn.BatchNorm2d):
    """One mean/variance/affine per channel of ``[B, C·|G|, H, W]`` instead of per field: not
    equivariant, but with fresh statistics (0, 1) and affine (1, 0) it is the identity map in eval mode."""

    def __init__(self, channels, order):
        super().__init__(channels * order)

    def forward(self, x):
        return super().forward(x.flatten(1, 2)).unflatten(1, x.shape[1:3])


class PerChannelBatchNormBackend(NativeBackend):
    name = "per-channel-bn"

    def batch_norm(self, group, in_type):
        if in_type.kind == "group":
            return _PerChannelBatchNorm(in_type.channels, group.order)
        return super().batch_norm(group, in_type)


def test_random_statistics_expose_a_bug_that_defaults_hide():
    c4, t = get_group("C4"), FieldType("group", 3)
    fresh = PerChannelBatchNormBackend().batch_norm(c4, t).eval()
    assert equivariance_errors(fresh, c4, t, t, torch.randn(2, 3, 4, 6, 6)).max_error == 0.0
    failures = _failures(PerChannelBatchNormBackend(), "C4")
    _only(failures, "batch_norm", "equivariance", "not equivariant in float32, eval mode")
    assert failures[0].startswith("group C4, batch_norm(group[3]): ") and len(failures) == 1


class _Float32Conv(LiftingConv):
    """Runs its convolution in float32 whatever the input's dtype."""

    def forward(self, x):
        bank, bias = self.filter_bank().float(), self.expanded_bias()
        y = F.conv2d(x.float(), bank, None if bias is None else bias.float(), self.stride, self.padding, self.dilation)
        return y.to(x.dtype).unflatten(1, (self.out_fields, self.group.order))


class Float32Backend(NativeBackend):
    name = "float32"

    def lifting_conv(self, group, in_type, out_fields, kernel_size, stride=1, padding=0, dilation=1, bias=True):
        return _Float32Conv(group, in_type.channels, out_fields, kernel_size, stride, padding, dilation, bias)


def test_float32_arithmetic_in_a_float64_layer_is_caught():
    failures = _failures(Float32Backend())
    _only(failures, "lifting_conv", "float64", "not equivariant in float64, eval mode: relative error")
    assert all("exceeds 1e-12" in line for line in failures) and len(failures) == 4


class _BiasForgettingNHWCConv(LiftingConv):
    def forward(self, x):
        if not self.channels_last:
            return super().forward(x)
        x = x.contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x, self.filter_bank(), None, self.stride, self.padding, self.dilation)
        return y.unflatten(1, (self.out_fields, self.group.order))


class NHWCBackend(NativeBackend):
    name = "nhwc"

    def lifting_conv(self, group, in_type, out_fields, kernel_size, stride=1, padding=0, dilation=1, bias=True):
        return _BiasForgettingNHWCConv(
            group, in_type.channels, out_fields, kernel_size, stride, padding, dilation, bias
        )


def test_a_channels_last_path_that_changes_values_is_caught():
    failures = _failures(NHWCBackend())
    _only(failures, "lifting_conv", "channels_last", "channels_last changes the output in float32, eval mode")
    assert len(failures) == 3 and not any("bias=False" in line for line in failures)


class _StaleCacheConv(LiftingConv):
    """Caches its bank in eval mode and never notices new weights."""

    def _expanded(self):
        if self.training or torch.is_grad_enabled():
            return self._bank(), self._expand_bias()
        if getattr(self, "_stale", None) is None:
            self._stale = (self._bank(), self._expand_bias())
        return self._stale


class StaleCacheBackend(NativeBackend):
    name = "stale-cache"

    def lifting_conv(self, group, in_type, out_fields, kernel_size, stride=1, padding=0, dilation=1, bias=True):
        return _StaleCacheConv(group, in_type.channels, out_fields, kernel_size, stride, padding, dilation, bias)


def test_a_stale_cached_bank_is_caught():
    failures = _failures(StaleCacheBackend())
    _only(failures, "lifting_conv", "conv", "after its weights change in eval mode the layer differs from conv2d")
    assert len(failures) == 4


class BiasDroppingTransferBackend(NativeBackend):
    name = "bias-dropping"

    def import_weights(self, layer, state):
        layer.load_state_dict({k: v for k, v in state.items() if k != "bias"}, strict=False)
        return 0.0


def test_a_transfer_that_loses_the_bias_is_caught():
    failures = _failures(BiasDroppingTransferBackend())
    assert failures
    for line in failures:
        assert "): transfer: import_weights(twin, export_weights(layer)) has residual 0 but the twin" in line
    failed = {line.split(", ", 1)[1].split("(")[0] for line in failures}
    assert failed == {"lifting_conv", "group_conv", "batch_norm", "layer_norm", "linear"}


class _Lambda(nn.Module):
    def __init__(self):
        super().__init__()
        self.function = lambda t: torch.relu(t)

    def forward(self, x):
        return self.function(x)


class UnpicklableBackend(NativeBackend):
    name = "unpicklable"

    def activation(self, group, in_type, name="relu"):
        return _Lambda() if name == "relu" else super().activation(group, in_type, name)


def test_a_layer_that_does_not_pickle_is_caught():
    failures = _failures(UnpicklableBackend())
    _only(failures, "activation", "copies", "raised ")
    assert len(failures) == 3 and all("name='relu'" in line and "pickle" in line for line in failures)


class _UnscaledDropout(nn.Dropout):
    def forward(self, x):
        return super().forward(x) * (1 - self.p) if self.training else x  # forgets the 1/(1-p)


class UnscaledDropoutBackend(NativeBackend):
    name = "unscaled-dropout"

    def dropout(self, group, in_type, p=0.5):
        return _UnscaledDropout(p)


def test_a_dropout_without_rescaling_is_caught():
    failures = _failures(UnscaledDropoutBackend())
    _only(failures, "dropout", "dropout", "some entries are neither 0 nor x/(1-p) with p=0.25")
    assert len(failures) == 3


class _KeepDimGroupPool(nn.Module):
    def forward(self, x):
        return x.amax(dim=2, keepdim=True)


class KeepDimBackend(NativeBackend):
    name = "keepdim"

    def group_pool(self, group, in_type, mode="max"):
        super().group_pool(group, in_type, mode)  # refuses a bad mode
        return _KeepDimGroupPool()


def test_a_wrong_output_shape_is_caught():
    failures = _failures(KeepDimBackend())
    shapes = "output shape [2, 3, 1, 5, 5], expected [2, 3, 5, 5] (image[3] on a 5×5 map)"
    _only(failures, "group_pool", "output", shapes)
    assert len(failures) == 2


class _PaddingCountingAvgPool(SpatialPool):
    """Average pooling that counts zero padding (escnn's PointwiseAvgPool2D does), exported alike:
    equivariant and consistent with its export, but not the contract's average pooling."""

    def forward(self, x):
        flat = x.flatten(1, 2) if x.ndim == 5 else x
        out = F.avg_pool2d(flat, self.kernel_size, self.stride, self.padding, count_include_pad=True)
        return out.unflatten(1, x.shape[1:3]) if x.ndim == 5 else out

    def export_plain(self):
        return nn.AvgPool2d(self.kernel_size, self.stride, self.padding, count_include_pad=True)


class PaddingCountingBackend(NativeBackend):
    name = "padding-counting"

    def spatial_pool(self, group, in_type, mode="max", kernel_size=2, stride=None, padding=0):
        if mode == "avg":
            return _PaddingCountingAvgPool(mode, kernel_size, stride, padding)
        return super().spatial_pool(group, in_type, mode, kernel_size, stride, padding)


def test_a_layer_that_computes_something_else_than_the_contract_is_caught():
    failures = _failures(PaddingCountingBackend())
    _only(failures, "spatial_pool", "reference", "avg pooling per channel, zero padding not counted")
    assert len(failures) == 2 and all("mode='avg'" in line and "padding=1)" in line for line in failures)


class _ShuffledBankConv(GroupConv):
    """Computes correctly, but reports its bank with output channels in the order h·out + o."""

    def filter_bank(self):
        bank = super().filter_bank()
        return bank.unflatten(0, (self.out_fields, self.group.order)).transpose(0, 1).flatten(0, 1)


class ShuffledBankBackend(NativeBackend):
    name = "shuffled-bank"

    def group_conv(self, group, in_type, out_fields, kernel_size, stride=1, padding=0, dilation=1, bias=True):
        return _ShuffledBankConv(group, in_type.channels, out_fields, kernel_size, stride, padding, dilation, bias)


def test_a_filter_bank_in_another_channel_order_is_caught():
    failures = _failures(ShuffledBankBackend())
    _only(failures, "group_conv", "conv", "the layer differs from conv2d with its filter_bank() and expanded_bias()")
    assert len(failures) == 4


class LenientBackend(NativeBackend):
    name = "lenient"

    def activation(self, group, in_type, name="relu"):
        return super().activation(group, in_type, name if name in ACTIVATIONS else "relu")  # unknown: relu


def test_a_silently_accepted_bad_value_is_caught():
    failures = _failures(LenientBackend())
    assert failures == [
        "group C2, errors: activation(group[2], 'no-such-mode') is accepted; refuse it in one line naming the "
        "value and what is allowed"
    ]


class OldBackend(NativeBackend):
    name = "old"
    api_version = 1


class OptionlessBackend(NativeBackend):
    name = "optionless"

    def with_options(self, **options):
        return self  # ignores unknown options


@pytest.mark.parametrize(
    ("backend", "problem"),
    [
        (OldBackend(), f"its api_version is 1; this gcnnkit has BACKEND_API_VERSION = {BACKEND_API_VERSION}"),
        (
            OptionlessBackend(),
            "with_options(no_such_option=1) is accepted; refuse unknown options in one line naming them",
        ),
    ],
)
def test_the_backend_itself_is_checked_first(backend, problem):
    assert _failures(backend) == [f"the backend itself: {problem}"]


# --------------------------------------------------------------------------- groups
class NoDihedralBackend(NativeBackend):
    name = "no-dihedral"

    def supports(self, group):
        return "no reflections here" if group.name.startswith("D") else None


def test_unsupported_groups_are_skipped_and_reported():
    report = assert_backend_conforms(NoDihedralBackend(), ["C2", "D1"])
    assert report.groups == ["C2"] and report.skipped == {"D1": "no reflections here"}
    assert "skipped D1: no reflections here" in report.summary()
    with pytest.raises(ConformanceError, match=r"it supports none of the groups checked \(D1: no reflections here\)"):
        assert_backend_conforms(NoDihedralBackend(), "D1")


def test_unknown_group_and_backend_names_are_one_line_errors():
    with pytest.raises(PluginError, match=r"^unknown group 'C4x'; installed: .*C4"):
        assert_backend_conforms("native", ["C4x"])
    with pytest.raises(PluginError, match=r"^unknown backend 'nope'; installed: .*native"):
        assert_backend_conforms("nope")


def test_the_suite_restores_the_thread_count():
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # it runs single-threaded, then puts this back
    try:
        assert_backend_conforms("native", "C1")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
