"""Rotation sweeps: accuracy as a function of the rotation angle (API, CLI, plot), and the 90° period
of a C4 model's curve."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from gcnnkit.cli import main
from gcnnkit.core.errors import GcnnkitError
from gcnnkit.core.transforms import rotate_images
from gcnnkit.run.evaluation import evaluate_run, rotate_by, rotation_sweep, rotation_sweep_run, sweep_angles
from gcnnkit.tools.plots import plot_rotation_sweep, sweep_labels

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def c4_run(tmp_path_factory):
    """gcnn-small on C4 trained to ~90% on 17×17 digits (about ten seconds on two cores)."""
    from conftest import TINY_CONFIG, merge

    from gcnnkit.run.config import Config
    from gcnnkit.run.training import train

    config = merge(TINY_CONFIG, {"model": {"backend": "native", "group": "C4", "preset": "gcnn-small"}})
    config = merge(config, {"data": {"name": "digits", "train_size": 800, "test_size": 150}})
    config = merge(config, {"train": {"epochs": 2, "batch_size": 32, "lr": 0.003}, "eval": {"protocols": ["upright"]}})
    run_dir = tmp_path_factory.mktemp("sweep") / "c4"
    train(Config.from_dict(config), out_dir=run_dir, log=None)
    return run_dir


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_sweep_angles():
    assert sweep_angles(5) == [5.0 * i for i in range(72)]
    assert sweep_angles(90) == [0.0, 90.0, 180.0, 270.0]
    assert sweep_angles(7)[-1] == 357.0 and len(sweep_angles(7)) == 52
    assert sweep_angles(360) == [0.0]
    for bad in (0, -5, 361, float("nan")):
        with pytest.raises(GcnnkitError, match="expected an angle in degrees > 0 and <= 360"):
            sweep_angles(bad)


def test_rotate_by_is_exact_on_quarter_turns_and_periodic():
    x = torch.rand(3, 2, 9, 9, generator=torch.Generator().manual_seed(0))
    for k in range(8):
        assert torch.equal(rotate_by(x, 90.0 * k), torch.rot90(x, k % 4, dims=(-2, -1)))
    for angle in (10.0, 37.5, 89.0):
        base = rotate_by(x, angle)
        assert torch.allclose(base, rotate_images(x, torch.full((3,), angle)), atol=1e-5)
        for k in (1, 2, 3):
            assert torch.equal(rotate_by(x, angle + 90.0 * k), torch.rot90(base, k, dims=(-2, -1)))


def test_rotation_sweep_of_a_c4_model_has_period_90(c4_run):
    result = rotation_sweep_run(c4_run, step=15)
    acc = dict(zip(result["angles"], result["accuracy"], strict=True))
    assert len(acc) == 24 and result["group"] == "C4" and result["num_test"] == 150
    for theta in (0.0, 15.0, 30.0, 45.0, 60.0, 75.0):
        assert acc[theta] == acc[theta + 90] == acc[theta + 180] == acc[theta + 270], (theta, acc)
    upright = evaluate_run(c4_run, ["upright", "rot90", "rot180", "rot270"])["accuracy"]
    assert acc[0.0] == upright["upright"] == upright["rot90"] == upright["rot180"] == upright["rot270"]
    assert acc[0.0] > 0.6  # trained well above chance, so the equalities are not those of a constant model
    assert len({acc[t] for t in (0.0, 15.0, 30.0, 45.0)}) > 1  # and the curve is not flat between quarter turns


def test_rotation_sweep_api_on_a_model(tiny_run):
    from gcnnkit.run.rundir import load_run

    run = load_run(tiny_run, device="cpu", test_size=40)
    accs = rotation_sweep(run.model, run.test, [0.0, 45.0, 90.0], mean=run.mean, std=run.std, batch_size=16)
    assert len(accs) == 3 and accs[0] == accs[2]
    assert all(0.0 <= a <= 1.0 for a in accs)
    for mode in (True, False):  # the sweep runs in eval mode and restores the caller's mode
        run.model.train(mode)
        rotation_sweep(run.model, run.test, [0.0], mean=run.mean, std=run.std)
        assert run.model.training is mode


def test_plot_writes_a_png_with_one_line_per_run(tmp_path):
    results = [
        {"run_dir": "runs/a", "preset": "p", "group": "C4", "backend": "native", "params": 10, "data": "MNIST",
         "num_test": 5, "angles": [0.0, 180.0], "accuracy": [0.9, 0.8]},
        {"run_dir": "runs/b", "preset": "p", "group": "C4", "backend": "native", "params": 10, "data": "MNIST",
         "num_test": 5, "angles": [0.0, 180.0], "accuracy": [0.5, 0.4]},
    ]  # fmt: skip
    assert sweep_labels(results) == ["p C4 (native) a", "p C4 (native) b"]
    path = plot_rotation_sweep(results, tmp_path / "sweep.png")
    assert path.read_bytes()[:8] == PNG
    with pytest.raises(GcnnkitError, match="does not exist"):
        plot_rotation_sweep(results, tmp_path / "missing" / "x.png")
    with pytest.raises(GcnnkitError, match="no sweep results"):
        plot_rotation_sweep([], tmp_path / "x.png")


# ------------------------------------------------------------------------------------ CLI
def test_cli_sweep_of_two_runs_with_table_and_plot(tiny_run, tiny_run_copy, tmp_path):
    plot = tmp_path / "sweep.png"
    result = invoke("eval", tiny_run, tiny_run_copy, "--rotation-sweep", "--step", "45", "--plot", plot)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("[1] ") and lines[1].startswith("[2] ") and "gcnn-tiny" in lines[0]
    rows = [line for line in lines if line.strip().split(" ")[0].endswith("°")]
    assert [row.split()[0] for row in rows] == [f"{a}°" for a in range(0, 360, 45)]
    cells = {row.split()[0]: row.split()[1:] for row in rows}
    assert cells["0°"] == cells["90°"] == cells["180°"] == cells["270°"]
    assert cells["45°"] == cells["135°"] == cells["225°"] == cells["315°"]
    assert cells["0°"][0] == cells["0°"][1]  # the copy is the same run
    assert f"plot: {plot}" in result.stdout
    assert plot.read_bytes()[:8] == PNG and plot.stat().st_size > 10_000


def test_cli_sweep_json(tiny_run):
    result = invoke("eval", tiny_run, "--rotation-sweep", "--step", "120", "--json", "--test-size", "30")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["step"] == 120.0 and data["angles"] == [0.0, 120.0, 240.0] and data["plot"] is None
    (run,) = data["runs"]
    assert run["num_test"] == 30 and len(run["accuracy"]) == 3 and run["preset"] == "gcnn-tiny"


def test_cli_eval_of_several_runs_without_a_sweep(tiny_run, tiny_run_copy):
    result = invoke("eval", tiny_run, tiny_run_copy, "--json", "--protocol", "upright")
    assert result.exit_code == 0, result.output
    both = json.loads(result.stdout)
    assert isinstance(both, list) and len(both) == 2
    assert both[0]["accuracy"] == both[1]["accuracy"]
    table = invoke("eval", tiny_run, tiny_run_copy, "--test-size", "20")
    assert table.exit_code == 0 and table.stdout.count("protocol  accuracy") == 2 and "20 digits test" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--plot", "x.png"], "--plot needs --rotation-sweep"),
        (["--step", "10"], "--step needs --rotation-sweep"),
        (
            ["--rotation-sweep", "--protocol", "rot90"],
            "--protocol and --rotation-sweep do not go together: the sweep turns the upright test set",
        ),
        (["--rotation-sweep", "--step", "0"], "--step 0.0: expected an angle in degrees > 0 and <= 360, e.g. 5"),
    ],
)
def test_cli_sweep_errors_are_one_line(tiny_run, args, message):
    result = invoke("eval", tiny_run, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"error: {message}"


def test_cli_sweep_of_a_folder_that_is_not_a_run(tmp_path):
    result = invoke("eval", tmp_path, "--rotation-sweep")
    assert result.exit_code == 2 and "not a run directory with a checkpoint.pt" in result.stderr
