"""Benchmark every preset on every installed backend against the plain-conv floor.

Usage (from the repository root)::

    python benchmarks/run_all.py                       # CPU: batch 1,64; gcnnkit presets on C4, D4 at 28, 64 px
    python benchmarks/run_all.py --device cuda         # GPU: batch 1,64,256
    python benchmarks/run_all.py --clock cpu --threads 1 --repeats 21   # steadier ratios on a shared CPU

Every preset runs on every installed backend: gcnnkit's own presets on ``--groups`` at
``--sizes``, the published architectures on the group and image size they were published for.
Writes the JSON report (``--out``, default ``runs/benchmarks/<device>.json`` under the working
directory, not tracked by git: the committed reports in ``benchmarks/results/`` are replaced only
when ``--out`` names them), prints the tables of ``gcnnkit bench`` and a Markdown table of the
ratios (as in ``docs/benchmarks.md``), and says whether the targets hold: native ≤ 1.05× the
floor in train mode and the export ≤ 1.02× in eval mode, for gcnn-small on C4 at batch 64, 28×28.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from gcnnkit.core.errors import GcnnkitError
from gcnnkit.core.registry import loadable_backends
from gcnnkit.tools.bench import (
    CLOCKS,
    DEFAULT_REPEATS,
    format_report,
    parse_int_list,
    preset_cases,
    resolve_device,
    run_bench,
    summary_table,
)

#: Where reports go without ``--out``: under the working directory, not in the committed benchmarks/results/.
DEFAULT_OUT_DIR = Path("runs") / "benchmarks"
TARGETS = {"native": ("train", 1.05), "export": ("eval", 1.02)}
TARGET_CASE = {"model": "gcnn-small", "group": "C4", "image_size": 28, "batch_size": 64}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument(
        "--groups", default="C4,D4", help="groups of presets published for none (default: C4,D4; others: their own)"
    )
    parser.add_argument("--presets", default="all", help="comma-separated presets (default: all)")
    parser.add_argument("--backends", default=None, help="comma-separated backends (default: every installed one)")
    parser.add_argument("--batch-sizes", default=None, help="default: 1,64 on CPU, 1,64,256 on CUDA")
    parser.add_argument(
        "--sizes", default="28,64", help="image sizes of presets published for none (default: 28,64; others: their own)"
    )
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--clock", choices=CLOCKS, default="wall")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-per-layer", action="store_true", help="skip the per-layer timings")
    parser.add_argument("--out", default=None, help="JSON report (default: runs/benchmarks/<device>.json)")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
        batch_sizes = parse_int_list(
            args.batch_sizes or ("1,64,256" if device.type == "cuda" else "1,64"), "--batch-sizes"
        )
        sizes = parse_int_list(args.sizes, "--sizes")
        if args.threads:
            torch.set_num_threads(args.threads)
        backends = args.backends.split(",") if args.backends else loadable_backends()
        cases = []
        for case in preset_cases(args.presets.split(","), None, backends):
            if case.image_size is None:  # not a published network: every group and size asked for
                for g in args.groups.split(","):
                    for size in sizes:
                        cases.append(replace(case, group=g.strip(), image_size=size))
            else:
                cases.append(case)
        report = run_bench(
            cases,
            device=device,
            batch_sizes=batch_sizes,
            sizes=None,
            repeats=args.repeats,
            per_layer=not args.no_per_layer,
            clock=args.clock,
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    except GcnnkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report["command"] = "python benchmarks/run_all.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out or DEFAULT_OUT_DIR / f"{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(format_report(report))
    print()
    print(summary_table(report))
    print()
    for line in target_lines(report):
        print(line)
    print(f"\nJSON report: {out}")
    return 0


def target_lines(report: dict) -> list[str]:
    """Whether native ≤ 1.05× (train) and the export ≤ 1.02× (eval) of the floor on the target case."""
    lines = []
    for entry in report["results"]:
        if all(entry.get(k) == v for k, v in TARGET_CASE.items()):
            for name, (mode, limit) in TARGETS.items():
                ratio = entry["ratio_to_floor"].get(name, {}).get(mode)
                if ratio is not None:
                    verdict = "met" if ratio <= limit else "NOT met"
                    lines.append(
                        f"target {name} {mode} <= {limit:.2f}x floor (gcnn-small C4 28x28 batch 64): "
                        f"{ratio:.3f}x, {verdict}"
                    )
    return lines


if __name__ == "__main__":
    sys.exit(main())
