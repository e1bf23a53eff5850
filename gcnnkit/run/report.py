"""The evaluation report (``gcnnkit eval --report``): per-class accuracy, confusion matrix, ROC AUC.

For each protocol the test images are transformed as in :func:`gcnnkit.run.evaluation.evaluate`
and the model's softmax probabilities collected (:func:`predict_split`); :func:`class_report`
turns them into the accuracy of each class, the confusion matrix (row: true class, column:
predicted class, counts) and, for a two-class task, the ROC AUC of the probability of class 1
(``sklearn.metrics.roc_auc_score``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gcnnkit.core.errors import GcnnkitError
from gcnnkit.core.modes import eval_mode
from gcnnkit.run.data import PROTOCOLS, Split, normalise, protocol_batches
from gcnnkit.run.rundir import LoadedRun, load_run


@torch.no_grad()
def predict_split(
    model: nn.Module,
    split: Split,
    protocol: str,
    *,
    mean: torch.Tensor,
    std: torch.Tensor,
    rotation_seed: int = 1234,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probabilities [N, K] float, labels [N] int64)``, on the CPU, of ``model`` (eval mode) on
    ``split`` under ``protocol``."""
    device = next(model.parameters()).device
    probs, labels = [], []
    with eval_mode(model):
        for x, y in protocol_batches(split, protocol, rotation_seed, batch_size):
            logits = model(normalise(x.to(device), mean, std)).float()
            probs.append(logits.softmax(dim=1).cpu())
            labels.append(y.cpu())
    return torch.cat(probs), torch.cat(labels)


def class_report(probs: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """Per-class accuracy and confusion matrix of predictions ``probs`` ``[N, K]`` against ``labels`` ``[N]``.

    Returns:
        ``{"accuracy", "classes": [...], "per_class": {name: {"images", "accuracy"}}, "confusion":
        [[count]] (row: true class, column: predicted)}``, plus ``"roc_auc"`` when ``K == 2`` (``None``
        when the labels hold only one class). A class without test images has accuracy ``None``.
    """
    k = len(class_names)
    if probs.ndim != 2 or probs.shape[1] != k:
        raise ValueError(f"probs must be [N, {k}], got {list(probs.shape)}")
    predicted = probs.argmax(dim=1)
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    per_class = {}
    for c, name in enumerate(class_names):
        n = int(confusion[c].sum())
        per_class[name] = {"images": n, "accuracy": int(confusion[c, c]) / n if n else None}
    out: dict[str, Any] = {
        "accuracy": int(confusion.diag().sum()) / max(1, len(labels)),
        "classes": list(class_names),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }
    if k == 2:
        from sklearn.metrics import roc_auc_score

        both = len(torch.unique(labels)) == 2
        out["roc_auc"] = float(roc_auc_score(labels.numpy(), probs[:, 1].double().numpy())) if both else None
    return out


def class_names(run: LoadedRun) -> list[str]:
    """The run's class names: saved with the run where its data set has them, else ``"0"``, ``"1"``, …"""
    saved = (run.checkpoint.get("data") or {}).get("classes")  # folder/csv sources: the folder or label names
    if saved and len(saved) == run.info.num_classes:
        return [str(name) for name in saved]
    return [str(c) for c in range(run.info.num_classes)]


def report_run(
    run_dir: str | Path,
    protocols: Sequence[str] | None = None,
    *,
    device: str | None = None,
    test_size: int | None = None,
    weights: str = "selected",
) -> dict[str, Any]:
    """:func:`gcnnkit.run.evaluation.evaluate_run` with a :func:`class_report` per protocol.

    Returns:
        the run's description (``run_dir``, ``epoch``, ``checkpoint``, …), ``"accuracy"``
        ``{protocol: accuracy}`` and ``"report"`` ``{protocol: class_report}``.
    """
    if protocols:
        unknown = [p for p in protocols if p not in PROTOCOLS]
        if unknown:
            raise GcnnkitError(f"protocol {unknown[0]!r} is not allowed; allowed: {', '.join(PROTOCOLS)}")
    run = load_run(run_dir, device=device, test_size=test_size, weights=weights)
    names = class_names(run)
    report = {}
    for protocol in protocols or run.config.eval.protocols:
        probs, labels = predict_split(
            run.model,
            run.test,
            protocol,
            mean=run.mean,
            std=run.std,
            rotation_seed=run.config.eval.rotation_seed,
            batch_size=run.config.eval.batch_size,
        )
        report[protocol] = class_report(probs, labels, names)
    accuracy = {p: r["accuracy"] for p, r in report.items()}
    return {**run.describe(), "accuracy": accuracy, "report": report}
