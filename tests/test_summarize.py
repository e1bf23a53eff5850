"""``gcnnkit summarize``: runs that differ only in seed (and bookkeeping) become one row with
mean ± sample standard deviation per protocol; anything else that differs makes its own row."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from gcnnkit.cli import main
from gcnnkit.run.aggregate import summarize_runs
from tests.conftest import TINY_CONFIG, assert_user_error


def _variant(source: Path, dest: Path, accuracy: dict[str, float], **config_changes) -> Path:
    """A copy of the finished run ``source`` whose summary says ``accuracy`` and whose config has
    ``config_changes`` (``section__key=value`` or ``seed=...``) applied."""
    shutil.copytree(source, dest)
    summary = json.loads((dest / "summary.json").read_text())
    summary["accuracy"] = accuracy
    config = yaml.safe_load((dest / "config.yaml").read_text())
    for key, value in config_changes.items():
        section, _, name = key.partition("__")
        if name:
            config[section][name] = value
        else:
            config[section] = value
    summary["seed"] = config["seed"]
    (dest / "summary.json").write_text(json.dumps(summary))
    (dest / "config.yaml").write_text(yaml.safe_dump(config))
    return dest


def _write(path: Path, text: str) -> Path:
    """Write ``text`` into ``path``; the run directory holding it."""
    path.write_text(text)
    return path.parent


def _summarize(*args: str):
    return CliRunner().invoke(main, ["summarize", *args])


def test_two_trained_seeds_give_their_mean_and_sample_std(tiny_run: Path, tmp_path: Path):
    from gcnnkit.run.config import Config
    from gcnnkit.run.training import train

    second = tmp_path / "seed1"
    train(Config.from_dict({**TINY_CONFIG, "seed": 1}), out_dir=second, log=None)
    runs = [json.loads((d / "summary.json").read_text())["accuracy"] for d in (tiny_run, second)]
    result = _summarize(str(tiny_run), str(second), "--json")
    assert result.exit_code == 0, result.output
    (group,) = json.loads(result.output)
    assert group["label"] == "gcnn-tiny (C4, native)" and group["seeds"] == [0, 1] and group["runs"] == 2
    for protocol in TINY_CONFIG["eval"]["protocols"]:
        values = [r[protocol] for r in runs]
        assert group["accuracy"][protocol]["per_run"] == values
        assert group["accuracy"][protocol]["mean"] == pytest.approx(statistics.fmean(values))
        assert group["accuracy"][protocol]["std"] == pytest.approx(statistics.stdev(values))

    table = _summarize(str(tiny_run), str(second), "--per-run")
    assert table.exit_code == 0, table.output
    up = [100 * r["upright"] for r in runs]
    expected = f"{statistics.fmean(up):.2f} ± {statistics.stdev(up):.2f}% ({up[0]:.2f} / {up[1]:.2f})"
    assert expected in table.output


def test_bookkeeping_merges_but_a_protocol_change_splits(tiny_run: Path, tmp_path: Path):
    a = _variant(tiny_run, tmp_path / "a", {"upright": 0.9}, seed=0)
    b = _variant(tiny_run, tmp_path / "b", {"upright": 0.8}, seed=1, device="cuda", data__root="/elsewhere")
    c = _variant(tiny_run, tmp_path / "c", {"upright": 0.5}, seed=0, train__lr=0.5)
    groups = summarize_runs([a, b, c])
    assert [g.seeds for g in groups] == [[0, 1], [0]]
    assert groups[0].mean("upright") == pytest.approx(0.85)
    assert groups[0].std("upright") == pytest.approx(statistics.stdev([0.9, 0.8]))
    assert groups[1].std("upright") == 0.0
    # the two groups share a preset, so each label names the value that tells them apart
    assert groups[0].label.endswith("train.lr=0.01") and groups[1].label.endswith("train.lr=0.5")


def test_error_reports_one_minus_accuracy(tiny_run: Path, tmp_path: Path):
    a = _variant(tiny_run, tmp_path / "a", {"upright": 0.97}, seed=0)
    b = _variant(tiny_run, tmp_path / "b", {"upright": 0.99}, seed=1)
    result = _summarize(str(a), str(b), "--error")
    assert result.exit_code == 0, result.output
    assert "test error" in result.output and "2.00 ± 1.41%" in result.output


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1, allow_nan=False), min_size=1, max_size=5))
def test_mean_and_std_match_statistics(tmp_path_factory, tiny_run, values):
    root = tmp_path_factory.mktemp("seeds")
    runs = [_variant(tiny_run, root / f"s{i}", {"upright": v}, seed=i) for i, v in enumerate(values)]
    (group,) = summarize_runs(runs)
    assert group.mean("upright") == pytest.approx(statistics.fmean(values))
    assert group.std("upright") == pytest.approx(statistics.stdev(values) if len(values) > 1 else 0.0)
    assert group.seeds == list(range(len(values)))


def test_unfinished_run_is_refused_with_the_resume_command(tiny_run: Path, tmp_path: Path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "half"))
    (run / "summary.json").unlink()
    result = _summarize(str(run))
    assert_user_error(result, str(run), "has not finished", "--resume")


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda run: run / "nowhere", "no such run directory"),
        (lambda run: (run / "empty").mkdir() or run / "empty", "not a run directory"),
        (lambda run: _write(run / "summary.json", "{broken"), "not JSON"),
        (lambda run: _write(run / "summary.json", '{"accuracy": 3}'), "no 'accuracy' mapping"),
    ],
    ids=["missing", "not-a-run", "summary-not-json", "summary-no-accuracy"],
)
def test_bad_run_directories_are_one_line_errors(tiny_run: Path, tmp_path: Path, make, fragment):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    result = _summarize(str(make(run)))
    assert_user_error(result, fragment)


def test_a_run_given_twice_is_refused(tiny_run: Path):
    assert_user_error(_summarize(str(tiny_run), str(tiny_run)), "given twice")
