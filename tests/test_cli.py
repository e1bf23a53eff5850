"""The command line: help, train/eval/check/plugins, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import CONFIGS, ROOT, TINY_CONFIG, assert_user_error, console_script, merge

from gcnnkit.cli import COMMANDS, main
from gcnnkit.core.group import cyclic_group
from gcnnkit.core.registry import REGISTRY, get_backend, register_backend, register_group

BROKEN_LAYERS = [
    {"type": "lift", "out": 4, "kernel": 3},
    "relu",
    {"type": "pool", "mode": "max", "kernel": 2, "stride": 2},  # asymmetric on the odd 17×17 grid
    {"type": "group_pool"},
    {"type": "global_pool"},
    {"type": "linear"},
]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    return runner.invoke(main, [str(a) for a in args])


# ------------------------------------------------------------------------------------ help
@pytest.mark.parametrize("command", [[], *([name] for name in COMMANDS)])
def test_every_command_has_help(runner, command):
    result = invoke(runner, *command, "--help")
    assert result.exit_code == 0
    assert "Usage: " in result.output


def test_main_help_lists_the_commands(runner):
    output = invoke(runner, "--help").output
    for name in ("train", "eval", "check", "plugins"):
        assert f"  {name} " in output


def test_version(runner):
    from gcnnkit import __version__

    assert invoke(runner, "--version").output.strip() == f"gcnnkit {__version__}"


# ----------------------------------------------------------------------------------- train
def test_train_writes_a_run_and_summarises_it_last(runner, tiny_config, tmp_path):
    out = tmp_path / "run"
    result = invoke(runner, "train", tiny_config, "--set", "train.epochs=1", "--out", out)
    assert result.exit_code == 0, result.output
    last = result.stdout.strip().splitlines()[-1]
    for part in ("group C4", "backend native", "preset gcnn-tiny", "params", "upright", "rotated", f"run dir {out}"):
        assert part in last
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoint.pt", "config.yaml", "data.json", "metrics.csv", "metrics.jsonl", "summary.json"]


def test_train_resume_from_the_cli(runner, tiny_run, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(TINY_CONFIG))  # JSON is YAML
    result = invoke(runner, "train", config, "--set", "train.epochs=3", "--out", run, "--resume")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"resuming {run} after epoch 2 of 3"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


# -------------------------------------------------------------------------------- bad input
@pytest.fixture
def picky_backend():
    """The native backend, registered in-process as ``picky``, refusing every group but C1."""

    class Picky(type(get_backend("native"))):
        name = "picky"

        def supports(self, group):
            return None if group.name == "C1" else "only C1 is supported"

    register_backend("picky", Picky)
    yield
    REGISTRY.unregister("backend", "picky")


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        (["--set", "train.epochs=ten"], ["train.epochs: expected int, got 'ten'"]),
        (["--set", "data.augment=spin"], ["data.augment: 'spin' is not allowed; allowed: none, rot90, rotate, flip"]),
        (["--set", "trian.epochs=1"], ["unknown key 'trian'"]),
        (["--set", "model.backend=nope"], ["unknown backend 'nope'; installed: ", "native"]),
        (["--set", "model.group=Q8"], ["unknown group 'Q8'; installed: ", "C4"]),
        (["--set", "model.preset=gcnn-huge"], ["model.preset: unknown preset 'gcnn-huge'; available:"]),
        (
            [
                "--set",
                "model.preset=null",
                "--set",
                "model.layers=[{type: lift, out: 4, kernel: 4}, group_pool, global_pool, linear]",
            ],
            ["kernel 4 is even", "allowed: odd kernels"],
        ),
        (
            ["--set", "model.layers=[{type: lift, out: 4, kernel: 21, padding: 0}, group_pool, global_pool, linear]"],
            ["model: the network cannot run on digits images [B, 1, 17, 17]: ", "Kernel size"],
        ),
        (
            ["--set", "model.layers=[{type: lift, out: 4}, group_pool, global_pool, {type: linear, out: 7}]"],
            ["model: the network outputs [7] per image, but digits needs 10 class scores"],
        ),
        (["--set", "model.backend_options={fast: true}"], ["model.backend_options:", "'fast'"]),
        (
            ["--set", "required_plugins=[gcnnkit-nonexistent>=1]"],
            ["required_plugins[0]: 'gcnnkit-nonexistent>=1' is not"],
        ),
        (
            ["--set", "data.name=imagenet"],
            ["data.name: 'imagenet' is not a supported data set; allowed: digits, MNIST"],
        ),
        (["--set", "data.train_size=99999"], ["data.train_size: 99999 is more than the 1437 images available"]),
        (["--resume"], ["--resume needs --out RUN_DIR"]),
    ],
)
def test_train_bad_input_is_one_line_and_exit_2(runner, tiny_config, tmp_path, args, parts):
    out = [] if "--resume" in args else ["--out", tmp_path / "r"]
    assert_user_error(invoke(runner, "train", tiny_config, *args, *out), *parts)
    assert not (tmp_path / "r").exists()  # no empty run directory left behind


def test_group_unsupported_by_the_backend(runner, tiny_config, tmp_path, picky_backend):
    result = invoke(runner, "train", tiny_config, "--set", "model.backend=picky", "--out", tmp_path / "r")
    assert_user_error(result, "backend 'picky' does not support group C4: only C1 is supported")


def test_missing_mnist_is_one_line(runner, tmp_path, write_config):
    config = write_config(merge(TINY_CONFIG, {"data": {"name": "mnist", "root": str(tmp_path / "nowhere")}}))
    result = invoke(runner, "train", config, "--out", tmp_path / "r")
    assert_user_error(result, f"data.root: no MNIST data under '{tmp_path / 'nowhere'}' (download: false)", "MNIST/raw")


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("train:\n  epochs: 3\n   lr: 0.1\n", ["bad.yaml: invalid YAML at line 3"]),
        ("modle:\n  group: C4\n", ["unknown key 'modle'", "allowed: seed, device, model, data, train, eval"]),
    ],
)
def test_bad_config_files(runner, write_config, text, parts):
    path = write_config(text, name="bad.yaml")
    for command in ("train", "check"):
        assert_user_error(invoke(runner, command, path), *parts)


def test_missing_config_file(runner, tmp_path):
    assert_user_error(invoke(runner, "check", tmp_path / "nope.yaml"), "nope.yaml: no such config file")


def test_click_usage_errors_exit_2(runner, tiny_run):
    assert invoke(runner, "train").exit_code == 2  # missing CONFIG
    assert invoke(runner, "eval", tiny_run, "--protocol", "sideways").exit_code == 2
    assert invoke(runner, "frobnicate").exit_code == 2


# -------------------------------------------------------------------------------------- eval
def test_eval_table(runner, tiny_run):
    result = invoke(runner, "eval", tiny_run)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert (
        lines[0].startswith(f"{tiny_run}: C4 native gcnn-tiny, ")
        and "epoch 2 (checkpoint.pt), 120 digits test images" in lines[0]
    )
    assert lines[1].split() == ["protocol", "accuracy"]
    assert [line.split()[0] for line in lines[2:]] == ["upright", "rotated", "rot90"]


def test_eval_json_and_protocols(runner, tiny_run):
    result = invoke(runner, "eval", tiny_run, "--json", "--protocol", "rot180", "--protocol", "flip")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data["accuracy"]) == ["rot180", "flip"]
    assert data["epoch"] == 2 and data["group"] == "C4"
    upright = json.loads(invoke(runner, "eval", tiny_run, "--json", "--protocol", "upright").stdout)
    assert data["accuracy"]["rot180"] == upright["accuracy"]["upright"]  # C4-invariant predictions


def test_eval_of_a_folder_that_is_not_a_run(runner, tmp_path):
    assert_user_error(invoke(runner, "eval", tmp_path), "not a run directory with a checkpoint.pt")


# ------------------------------------------------------------------------------------- check
def test_check_default_config_passes(runner):
    result = invoke(runner, "check", CONFIGS / "digits_c4.yaml")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "C4 on backend native: 63,114 parameters, input [B, 1, 17, 17], tolerance 1e-05"
    assert lines[-2].startswith("end-to-end") and lines[-2].endswith("ok")
    assert lines[-1].startswith("equivariant: worst relative error ")


def test_check_json(runner, tiny_config):
    result = invoke(runner, "check", tiny_config, "--json", "--set", "model.group=D4")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["group"] == "D4" and data["passed"] is True
    assert data["max_rel_error"] == max(layer["max_rel_error"] for layer in data["layers"]) < 1e-5
    assert data["layers"][-1]["name"] == "end-to-end"
    assert set(data["layers"][0]["errors"]) == {"e", "r1", "r2", "r3", "f", "r1f", "r2f", "r3f"}


def test_check_fails_with_exit_1_on_a_broken_architecture(runner, write_config):
    model = {"preset": None, "layers": BROKEN_LAYERS, "allow_non_equivariant": True}
    config = write_config(merge(TINY_CONFIG, {"model": model}))
    result = invoke(runner, "check", config)
    assert result.exit_code == 1, result.output
    assert "2.pool" in result.stdout and "FAIL" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("NOT equivariant: worst relative error")
    data = json.loads(invoke(runner, "check", config, "--json").stdout)
    assert data["passed"] is False and data["worst_layer"] == "2.pool" and data["max_rel_error"] > 0.01


def test_check_exact_elements_of_an_interpolated_group(runner, tiny_config):
    register_group("R8", lambda: cyclic_group(8, name="R8"))  # 45° turns: filters are interpolated
    try:
        everything = invoke(runner, "check", tiny_config, "--set", "model.group=R8", "--json")
        exact = invoke(runner, "check", tiny_config, "--set", "model.group=R8", "--json", "--elements", "exact")
    finally:
        REGISTRY.unregister("group", "R8")
    # interpolated elements (45°) are measured on smooth input and reported, but only exact ones are judged
    assert everything.exit_code == 0, everything.output
    report = json.loads(everything.stdout)
    assert report["max_rel_error"] < 1e-5 and report["max_interpolated_rel_error"] > 1e-3
    assert set(report["layers"][0]["errors"]) == {f"r{k}" for k in range(1, 8)} | {"e"}
    assert exact.exit_code == 0, exact.output
    data = json.loads(exact.stdout)
    assert data["elements"] == "exact" and set(data["layers"][0]["errors"]) == {"e", "r2", "r4", "r6"}
    assert data["max_interpolated_rel_error"] is None


def test_check_tolerance(runner, tiny_config):
    assert invoke(runner, "check", tiny_config, "--tolerance", "0").exit_code == 1  # float32 is not exact
    assert invoke(runner, "check", tiny_config, "--tolerance", "1e-3").exit_code == 0


# ----------------------------------------------------------------------------------- plugins
def test_plugins_lists_backends_and_groups(runner):
    result = invoke(runner, "plugins")
    assert result.exit_code == 0
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0] == ["kind", "name", "from", "status"]
    native = next(row for row in rows if row[:2] == ["backend", "native"])
    assert native[2] == "gcnnkit-native" and native[-1] == "ok"
    listed = {row[1] for row in rows if row[0] == "group"}
    assert {"C1", "C2", "C4", "D1", "D2", "D4"} <= listed


def test_plugins_json_reports_failures(runner):
    register_backend("broken", 42)  # not a Backend: fails to build
    try:
        data = json.loads(invoke(runner, "plugins", "--json").stdout)
    finally:
        REGISTRY.unregister("backend", "broken")
    backends = {b["name"]: b for b in data["backends"]}
    assert backends["native"]["error"] is None and backends["native"]["distribution"] == "gcnnkit-native"
    assert "expected a gcnnkit.core.backend.Backend, got int" in backends["broken"]["error"]
    assert {"C4", "D4"} <= {g["name"] for g in data["groups"]}


# ----------------------------------------------------------------------- the real console script
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "{bad}"], "error: {bad}: invalid YAML at line 2: "),
        (["check", "{tiny}", "--set", "model.group=Q8"], "error: unknown group 'Q8'; installed: "),
        (["eval", "{tmp}"], "error: {tmp}: not a run directory"),
    ],
)
def test_console_script_exits_2_with_one_line_and_no_traceback(tmp_path, tiny_config, args, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [C4\n")
    names = {"bad": bad, "tiny": tiny_config, "tmp": tmp_path}
    proc = subprocess.run(
        [console_script(), *(a.format(**names) for a in args)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(message.format(**names))
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr + proc.stdout
