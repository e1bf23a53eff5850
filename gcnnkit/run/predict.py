"""Predictions of a trained run on new images, optionally averaged over exact rotations and flips.

:func:`predict` decodes each image as training did (:func:`gcnnkit.run.data.images.decode_image`:
converted to the model's channel count, resized to its image size), normalises it with the run's
statistics and returns the class probabilities (softmax). Test-time augmentation (``tta``) averages
the probabilities over exact transformations of the image: ``rot90`` the four quarter turns,
``d4`` those and their mirror images. They map pixels to pixels, so for a model that is invariant
to them (a G-CNN of C4 or D4 ending in group pooling) every transformed copy gives the same
probabilities and averaging changes nothing but rounding; for a plain CNN it helps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gcnnkit.core.errors import DataError
from gcnnkit.core.modes import eval_mode
from gcnnkit.run.data.images import decode_image, is_image_file, list_images
from gcnnkit.run.data.splits import normalise
from gcnnkit.run.rundir import load_run

TTA_MODES = ("none", "rot90", "d4")


@dataclass
class Prediction:
    """One image's predicted class and its probability for every class (``probabilities[k]`` is class ``k``'s)."""

    path: str
    label: int
    name: str
    probabilities: list[float]


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files among ``inputs`` (files, or folders searched recursively, sorted)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise DataError(f"{path}: no images in this folder (allowed: .png, .jpg, .jpeg, .tif, .tiff)")
            files += found
        elif path.is_file():
            if not is_image_file(path):
                raise DataError(f"{path}: not an image file; allowed: .png, .jpg, .jpeg, .tif, .tiff")
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return files


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The transformed copies of ``x`` ``[B, C, H, W]`` that ``mode`` averages over (``x`` itself first)."""
    if mode not in TTA_MODES:
        raise DataError(f"--tta: {mode!r} is not allowed; allowed: {', '.join(TTA_MODES)}")
    if mode == "none":
        return [x]
    turns = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    return turns if mode == "rot90" else turns + [t.flip(-1) for t in turns]


@torch.no_grad()
def predict(
    run_dir: str | Path,
    inputs: Sequence[str | Path],
    *,
    tta: str = "none",
    device: str | None = None,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[str], list[Prediction]]:
    """Class names and one :class:`Prediction` per image of ``inputs``, in file order.

    ``progress`` is called with the number of images done after each batch.
    """
    tta_views(torch.zeros(1, 1, 2, 2), tta)  # a bad --tta fails before anything loads
    files = image_files(inputs)
    run = load_run(run_dir, device=device or "cpu", with_data=False)
    stored = run.checkpoint.get("data") or {}
    classes = list(stored.get("classes") or [str(k) for k in range(run.info.num_classes)])
    c, size, _ = run.info.image_shape
    model_device = next(run.model.parameters()).device
    out: list[Prediction] = []
    with eval_mode(run.model):
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            x = torch.stack([decode_image(p, c, size, run.config.data.resize) for p in chunk]).float() / 255.0
            x = normalise(x.to(model_device), run.mean, run.std)
            views = tta_views(x, tta)
            probs = sum(torch.softmax(run.model(v).float(), dim=1) for v in views) / len(views)
            for path, p in zip(chunk, probs.cpu(), strict=True):
                label = int(p.argmax())
                out.append(Prediction(str(path), label, classes[label], [float(v) for v in p]))
            if progress is not None:
                progress(len(out))
    return classes, out


def predictions_csv(classes: list[str], preds: list[Prediction]) -> str:
    """``path,class,p_<name>...`` rows (probabilities with 6 decimals)."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "class", *[f"p_{name}" for name in classes]])
    for p in preds:
        writer.writerow([p.path, p.name, *[f"{v:.6f}" for v in p.probabilities]])
    return buf.getvalue()


def predictions_json(classes: list[str], preds: list[Prediction]) -> list[dict]:
    return [
        {"path": p.path, "class": p.name, "probabilities": dict(zip(classes, p.probabilities, strict=True))}
        for p in preds
    ]
