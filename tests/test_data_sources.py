"""The user's own images: folder, csv and arrays sources, streaming, the validation split, bad input,
data-set plugins and ``gcnnkit predict``."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import ROOT, assert_user_error

from gcnnkit.cli import main
from gcnnkit.core.errors import DataError, PluginError
from gcnnkit.core.registry import REGISTRY, register_dataset
from gcnnkit.run.config import Config
from gcnnkit.run.data import DATA_FILE, SKIPPED_FILE, SourceSplits, Split, load_dataset
from gcnnkit.run.data.splits import channel_stats
from gcnnkit.run.data.streaming import choose_in_memory
from gcnnkit.tools.images import write_digits_folder, write_tiles

SHAPES_SRC = ROOT / "docs" / "examples" / "gcnnkit-shapes"


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    """The 1,797 digits as 17×17 grey PNGs in root/<class>/."""
    root = tmp_path_factory.mktemp("digits") / "folder"
    write_digits_folder(root)
    return root


def data_cfg(**data):
    return Config.from_dict({"data": {"num_workers": 0, **data}}).data


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def folder_config(tmp_path: Path, root: Path, **data) -> Path:
    import yaml

    cfg = {
        "seed": 0,
        "device": "cpu",
        "model": {"backend": "native", "group": "C4", "preset": "gcnn-tiny"},
        "data": {"name": "folder", "root": str(root), "train_size": 300, "test_size": 120, **data},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.01},
        "eval": {"protocols": ["upright", "rot90"], "batch_size": 60},
    }
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ folder source
def test_folder_lists_classes_and_carves_a_fixed_test_set(digits_folder):
    data = load_dataset(data_cfg(name="folder", root=str(digits_folder), in_memory="false"))
    assert data.classes == [str(k) for k in range(10)] and data.info.num_classes == 10
    assert data.info.image_shape == (1, 17, 17)
    assert len(data.train) + len(data.test) == 1797 and abs(len(data.test) - 0.2 * 1797) < 12
    assert torch.bincount(data.test.labels).min() >= 30  # stratified: every class in the test set
    assert not data.in_memory and "streamed" in data.in_memory_reason and data.val is None
    files = {data.test.name(i) for i in range(len(data.test))}
    assert not files & {data.train.name(i) for i in range(len(data.train))}  # disjoint
    again = load_dataset(data_cfg(name="folder", root=str(digits_folder)))
    assert again.in_memory and "fits data.memory_budget_gb" in again.in_memory_reason  # auto: small
    assert torch.equal(again.test.labels, data.test.labels)


def test_streamed_and_in_memory_batches_hold_the_same_pixels(digits_folder):
    streamed = load_dataset(data_cfg(name="folder", root=str(digits_folder), in_memory="false", num_workers=2))
    memory = load_dataset(data_cfg(name="folder", root=str(digits_folder), in_memory="true"))
    order = torch.randperm(len(memory.train), generator=torch.Generator().manual_seed(3))[:200]
    a = torch.cat(list(streamed.train.batches(order, 64)))
    b = torch.cat(list(memory.train.batches(order, 64)))
    assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)
    assert torch.equal(streamed.mean, memory.mean) and torch.equal(streamed.std, memory.std)
    # the PNGs hold the built-in digits rounded to 8 bits
    builtin = load_dataset(data_cfg(name="digits"))
    assert abs(float(memory.mean) - float(builtin.mean)) < 0.01


def test_normalisation_statistics_come_from_a_bounded_sample(digits_folder):
    data = load_dataset(data_cfg(name="folder", root=str(digits_folder), in_memory="true"))
    mean, std = channel_stats(data.train, limit=len(data.train))
    assert torch.allclose(mean, data.train.images.mean(dim=(0, 2, 3)), atol=1e-6)
    assert torch.allclose(std, data.train.images.std(dim=(0, 2, 3)), atol=1e-6)
    few, _ = channel_stats(data.train, limit=100)
    assert not torch.equal(few, mean) and abs(float(few - mean)) < 0.03


def test_train_val_test_folders_and_val_split(tmp_path):
    root = tmp_path / "split"
    write_digits_folder(root, layout="split")
    shutil.copytree(root / "test", root / "val")
    data = load_dataset(data_cfg(name="folder", root=str(root)))
    assert (len(data.train), len(data.val), len(data.test)) == (1437, 360, 360)
    with pytest.raises(
        DataError,
        match=r"data.val_split: 0.1 carves a validation set, but image folder .* has its own \(360 images\); set",
    ):
        load_dataset(data_cfg(name="folder", root=str(root), val_split=0.1))
    shutil.rmtree(root / "val")
    carved = load_dataset(data_cfg(name="folder", root=str(root), val_split=0.1))
    assert len(carved.val) + len(carved.train) == 1437 and 130 <= len(carved.val) <= 150
    again = load_dataset(data_cfg(name="folder", root=str(root), val_split=0.1))
    assert torch.equal(carved.val.images, again.val.images)  # fixed seed
    digits = load_dataset(data_cfg(name="digits", val_split=0.25))
    assert len(digits.val) + len(digits.train) == 1437 and len(digits.test) == 360
    train = {tuple(x.flatten().tolist()) for x in digits.train.images}
    assert not any(tuple(x.flatten().tolist()) in train for x in digits.val.images)


def test_training_through_the_cli_gives_the_same_accuracy_streamed_and_in_memory(digits_folder, tmp_path):
    config = folder_config(tmp_path, digits_folder)
    results = {}
    for mode, workers in (("true", "0"), ("false", "2")):
        out = tmp_path / f"run-{mode}"
        sets = [f"data.in_memory={mode}", "train.epochs=1", f"data.num_workers={workers}"]
        result = run_cli("train", str(config), "--out", str(out), *[a for v in sets for a in ("--set", v)])
        assert result.exit_code == 0, result.output
        reason = "in memory (data.in_memory: true" if mode == "true" else "streamed from disk (data.in_memory: false"
        assert f"data: image folder {digits_folder}, {reason}" in result.output
        results[mode] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        described = json.loads((out / DATA_FILE).read_text())
        assert described["classes"] == [str(k) for k in range(10)] and described["in_memory"] == (mode == "true")
    drop = ("epoch_seconds",)
    same = [{k: v for k, v in r.items() if k not in drop} for r in results["true"]]
    assert same == [{k: v for k, v in r.items() if k not in drop} for r in results["false"]]


# ------------------------------------------------------------------------------ csv and arrays
def test_csv_manifest_matches_the_folder(digits_folder, tmp_path):
    manifest = tmp_path / "labels.csv"
    files = sorted(digits_folder.rglob("*.png"))
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "digit"])
        for p in files:
            writer.writerow([str(p.relative_to(digits_folder.parent)), p.parent.name])
    shutil.copytree(digits_folder, tmp_path / digits_folder.name)  # paths relative to the manifest
    data = load_dataset(data_cfg(name="csv", root=str(manifest), path_column="file", label_column="digit"))
    folder = load_dataset(data_cfg(name="folder", root=str(digits_folder)))
    assert data.classes == folder.classes and torch.equal(data.test.labels, folder.test.labels)
    assert torch.equal(data.train.images, folder.train.images)
    with pytest.raises(
        DataError, match=r"data.label_column: 'label' is not a column of .*labels.csv; columns: file, digit"
    ):
        load_dataset(data_cfg(name="csv", root=str(manifest), path_column="file"))


def arrays_payload(n_train=40, n_test=12, layout="nhwc"):
    gen = np.random.default_rng(0)
    shape = {"nhwc": (15, 15, 3), "nchw": (3, 15, 15), "nhw": (15, 15)}[layout]
    return {
        "train_images": gen.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "train_labels": np.arange(n_train) % 4,
        "test_images": gen.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "test_labels": np.arange(n_test) % 4,
        "classes": np.array(["a", "b", "c", "d"]),
    }


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nhw"])
def test_arrays_npz_and_npy_are_memory_mapped_and_agree(tmp_path, layout):
    payload = arrays_payload(layout=layout)
    np.savez(tmp_path / "set.npz", **payload)
    (tmp_path / "npy").mkdir()
    for key, value in payload.items():
        np.save(tmp_path / "npy" / f"{key}.npy", value)
    a = load_dataset(data_cfg(name="arrays", root=str(tmp_path / "set.npz"), in_memory="false"))
    b = load_dataset(data_cfg(name="arrays", root=str(tmp_path / "npy")))
    assert a.classes == ["a", "b", "c", "d"] and a.info.in_channels == (1 if layout == "nhw" else 3)
    x = torch.cat(list(a.train.batches(torch.arange(len(a.train)), 16)))
    assert torch.equal(x, b.train.images)
    expected = torch.from_numpy(payload["train_images"]).float() / 255
    if layout != "nchw":
        expected = expected.permute(0, 3, 1, 2) if layout == "nhwc" else expected[:, None]
    assert torch.equal(x, expected)
    store = a.train.store
    assert isinstance(store._arr(), np.memmap)  # not read whole
    resized = load_dataset(data_cfg(name="arrays", root=str(tmp_path / "npy"), image_size=11))
    assert resized.train.images.shape[-2:] == (11, 11)


def test_arrays_bad_input(tmp_path):
    np.savez_compressed(tmp_path / "packed.npz", **arrays_payload())
    with pytest.raises(DataError, match="compressed .* cannot be memory-mapped"):
        load_dataset(data_cfg(name="arrays", root=str(tmp_path / "packed.npz")))
    payload = arrays_payload()
    del payload["test_labels"]
    np.savez(tmp_path / "nolabels.npz", **payload)
    with pytest.raises(DataError, match="has test_images but no test_labels"):
        load_dataset(data_cfg(name="arrays", root=str(tmp_path / "nolabels.npz")))


def test_arrays_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")
    payload = arrays_payload()
    with h5py.File(tmp_path / "set.h5", "w") as f:
        for key, value in payload.items():
            f[key] = value.astype("S") if key == "classes" else value
    data = load_dataset(data_cfg(name="arrays", root=str(tmp_path / "set.h5"), in_memory="false", num_workers=1))
    x = torch.cat(list(data.test.batches(torch.arange(len(data.test)), 5)))
    assert torch.equal(x, torch.from_numpy(payload["test_images"]).float().permute(0, 3, 1, 2) / 255)


# ------------------------------------------------------------------------------ bad input
def small_folder(root: Path, n: int = 3, size: int = 12, mode: str = "L") -> Path:
    from PIL import Image

    for label in ("a", "b"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            Image.new(mode, (size, size), color=40 * k if mode == "L" else (40 * k, 0, 0)).save(
                root / label / f"{k}.png"
            )
    return root


@pytest.mark.parametrize(
    "make, parts",
    [
        (
            lambda r: (small_folder(r), (r / "a" / "1.png").write_bytes(b"not a png")),
            ["a/1.png", "not a readable image"],
        ),
        (
            lambda r: (small_folder(r), (r / "b" / "x.png").write_bytes((r / "a" / "0.png").read_bytes()[:40])),
            ["b/x.png"],
        ),  # fmt: skip
        (lambda r: (small_folder(r), small_folder(r / "c", mode="RGB")), ["is colour (3 channels)", "data.channels"]),
        (lambda r: (small_folder(r), (r / "c").mkdir()), ["class folder", "/c has no images"]),
        (lambda r: r.mkdir(), ["no class folders in"]),
        (
            lambda r: (small_folder(r), small_folder(r / "b" / "tiny", size=6)),
            ["6×6 is smaller than data.image_size 12"],
        ),
        (
            lambda r: (small_folder(r), (r / "stray.png").write_bytes((r / "a" / "0.png").read_bytes())),
            ["stray.png is not in a class folder"],
        ),  # fmt: skip
    ],
    ids=["unreadable", "truncated", "mixed-channels", "empty-class", "no-images", "too-small", "stray-file"],
)
def test_bad_folders_are_one_line_errors(tmp_path, make, parts):
    root = tmp_path / "imgs"
    make(root)
    config = folder_config(tmp_path, root, train_size=None, test_size=None, image_size=12)
    result = run_cli("train", str(config), "--out", str(tmp_path / "run"))
    assert_user_error(result, *parts)
    assert not (tmp_path / "run").exists()


def test_skip_corrupt_counts_and_lists_the_files(tmp_path):
    root = small_folder(tmp_path / "imgs", n=6)
    (root / "a" / "bad.png").write_bytes(b"\x89PNG garbage")
    config = folder_config(tmp_path, root, train_size=None, test_size=None, skip_corrupt=True)
    result = run_cli("train", str(config), "--out", str(tmp_path / "run"), "--set", "train.epochs=1")
    assert result.exit_code == 0, result.output
    assert "1 corrupt files skipped" in result.output
    assert (tmp_path / "run" / SKIPPED_FILE).read_text() == f"{root / 'a' / 'bad.png'}\n"


def test_in_memory_switch():
    assert choose_in_memory("auto", 2**29, 1.0)[0] and not choose_in_memory("auto", 2**31, 1.0)[0]
    assert choose_in_memory("true", 2**40, 1.0) == (True, "in memory (data.in_memory: true; 1024.00 GiB decoded)")
    assert Config.from_dict({"data": {"in_memory": False}}).data.in_memory == "false"  # YAML false
    with pytest.raises(Exception, match="data.in_memory: expected auto, true or false"):
        Config.from_dict({"data": {"in_memory": "sometimes"}})


# ------------------------------------------------------------------------------ plugins
class _Tiny:
    api_version = 1
    classes = ["zero", "one"]
    channels = 1
    image_size = 9

    def load(self, settings):
        images = torch.zeros(20, 1, 9, 9)
        images[10:, :, 3:6, 3:6] = 1.0
        labels = torch.arange(20) // 10
        return SourceSplits(Split(images, labels), Split(images, labels), classes=self.classes, source="tiny")


@pytest.fixture
def registered():
    names = []

    def add(name, obj):
        register_dataset(name, obj)
        names.append(name)

    yield add
    for name in names:
        REGISTRY.unregister("dataset", name)


def test_an_in_process_dataset_plugin_trains_and_broken_ones_are_isolated(registered, tmp_path):
    registered("tinyset", _Tiny)
    data = load_dataset(data_cfg(name="TinySet"))
    assert data.info.name == "tinyset" and data.classes == ["zero", "one"] and len(data.train) == 20

    class Future(_Tiny):
        api_version = 2

    registered("future", Future)
    with pytest.raises(PluginError, match="written for dataset API version 2, but this gcnnkit"):
        load_dataset(data_cfg(name="future"))

    class Broken:
        api_version = 1

    registered("broken", Broken)
    with pytest.raises(PluginError, match="needs classes, channels, image_size, load; Broken lacks classes"):
        load_dataset(data_cfg(name="broken"))
    assert len(load_dataset(data_cfg(name="tinyset")).test) == 20  # the others keep working


@pytest.fixture(scope="module")
def shapes_site(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("shapes")
    source = Path(shutil.copytree(SHAPES_SRC, work / "src"))
    site = work / "site"
    command = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-compile",
               "--disable-pip-version-check", "--no-input", "--quiet", "--target", str(site), str(source)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return site


@pytest.mark.slow
def test_the_docs_plugin_installs_lists_and_trains(shapes_site, tmp_path):
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shapes_site), os.environ.get("PYTHONPATH")]))}
    env.pop("GCNNKIT_DISABLE_PLUGIN_AUTOLOAD", None)
    listing = subprocess.run([sys.executable, "-m", "gcnnkit.cli", "plugins", "--json"], capture_output=True,
                             text=True, env=env, timeout=120)  # fmt: skip
    if listing.returncode != 0:  # no __main__: call main()
        script = "import sys; from gcnnkit.cli import main; sys.argv = ['gcnnkit', 'plugins', '--json']; main()"
        listing = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    datasets = json.loads(listing.stdout)["datasets"]
    assert [(d["name"], d["distribution"], d["version"], d["error"]) for d in datasets] == [
        ("shapes", "gcnnkit-shapes", "0.1.0", None)
    ]
    script = (
        "import sys; from gcnnkit.cli import main; sys.argv = ['gcnnkit', 'train', sys.argv[1], '--out', sys.argv[2],"
        " '--set', 'data.name=shapes', '--set', 'data.train_size=96', '--set', 'data.test_size=48',"
        " '--set', 'train.epochs=1', '--set', 'data.in_memory=false', '--set', 'data.num_workers=0']; main()"
    )
    config = folder_config(tmp_path, tmp_path)
    run = subprocess.run([sys.executable, "-c", script, str(config), str(tmp_path / "run")], capture_output=True,
                         text=True, env=env, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "data: gcnnkit-shapes, streamed from disk" in run.stdout
    assert json.loads((tmp_path / "run" / DATA_FILE).read_text())["classes"] == ["disc", "ring", "cross"]


def test_docs_plugin_is_at_most_40_lines_and_shown_verbatim():
    code = (SHAPES_SRC / "gcnnkit_shapes.py").read_text()
    assert len(code.splitlines()) <= 40
    page = (ROOT / "docs" / "data.md").read_text()
    for path in sorted(SHAPES_SRC.iterdir()):
        assert path.read_text().strip() in page, f"docs/data.md must show {path.name} verbatim"


# ------------------------------------------------------------------------------ predict
@pytest.fixture(scope="module")
def folder_run(digits_folder, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("folder-run")
    config = folder_config(tmp, digits_folder)
    result = run_cli(
        "train", str(config), "--out", str(tmp / "run"), "--set", "data.in_memory=false", "--set", "train.epochs=1"
    )
    assert result.exit_code == 0, result.output
    return tmp / "run"


def test_predict_writes_csv_and_json_and_tta_leaves_an_invariant_model_unchanged(folder_run, digits_folder, tmp_path):
    images = digits_folder / "3"
    plain = run_cli("predict", str(folder_run), str(images), "--out", str(tmp_path / "p.csv"))
    assert plain.exit_code == 0, plain.output
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == len(list(images.glob("*.png"))) and list(rows[0]) == [
        "path",
        "class",
        *[f"p_{k}" for k in range(10)],
    ]
    assert {r["class"] for r in rows} <= {str(k) for k in range(10)}
    for tta in ("rot90", "d4"):
        result = run_cli("predict", str(folder_run), str(images), "--tta", tta, "--out", str(tmp_path / f"{tta}.json"))
        assert result.exit_code == 0, result.output
        preds = json.loads((tmp_path / f"{tta}.json").read_text())
        for row, pred in zip(rows, preds, strict=True):
            assert pred["path"] == row["path"]
            got = [pred["probabilities"][str(k)] for k in range(10)]
            if tta == "rot90":  # a C4 G-CNN with group pooling is invariant to quarter turns
                assert np.allclose(got, [float(row[f"p_{k}"]) for k in range(10)], atol=1e-5)
    # the CSV's probabilities are what the model gives the decoded image
    assert abs(sum(float(rows[0][f"p_{k}"]) for k in range(10)) - 1) < 1e-4


def test_predict_bad_input(folder_run, tmp_path):
    assert_user_error(run_cli("predict", str(folder_run), str(tmp_path / "nope.png")), "no such file or folder")
    (tmp_path / "empty").mkdir()
    assert_user_error(run_cli("predict", str(folder_run), str(tmp_path / "empty")), "no images in this folder")
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert_user_error(run_cli("predict", str(folder_run), str(tmp_path / "bad.png")), "bad.png", "cannot decode")
    good = next((folder_run.parent).glob("*.yaml"))
    assert_user_error(run_cli("predict", str(folder_run), str(good)), "not an image file")
    assert_user_error(
        run_cli("predict", str(folder_run), str(tmp_path / "bad.png"), "--out", str(tmp_path / "x.txt")),
        ".csv or .json",
    )


def test_make_folder_tiles(tmp_path):
    assert write_tiles(tmp_path / "t", 6, size=32) == 6
    data = load_dataset(data_cfg(name="folder", root=str(tmp_path / "t"), test_split=0.34))
    assert data.info.image_shape == (3, 32, 32) and len(data.test) == 2
    assert_user_error(run_cli("make-folder", str(tmp_path / "t")), "exists and is not empty")
