"""Cold build time of every preset on every installed backend, each in a fresh Python process.

Usage (from the repository root)::

    python benchmarks/build_time.py                          # every preset, C4 and D4, both backends
    python benchmarks/build_time.py --groups C4,D4,C8,C16,D16 --presets c4cnn-gdl --backends escnn \
        --out runs/benchmarks/build-cpu-largest.json
    python benchmarks/build_time.py --escnn-basis complete --backends escnn \
        --out runs/benchmarks/build-cpu-complete.json

``gcnnkit bench`` reports the median of several builds in one process, after the backend's own
caches (escnn's groups, irreps and sampled bases) are warm. A user's first model pays for those
caches, so this script starts one process per (backend, group, preset) and times, in it: importing
torch, gcnnkit and the backend (``import_s``), the first ``build_model`` (``first_build_s``) and a
second identical one (``second_build_s``). escnn's Clebsch–Gordan cache on disk (joblib, in
``escnn/group/_cache`` inside the installed package) is warm after the first run on a machine;
``first_build_s`` is otherwise cold.

Writes ``--out`` (default ``runs/benchmarks/build-cpu.json``, under the working directory and not
tracked by git; the committed reports in ``benchmarks/results/`` are replaced only when ``--out``
names them), prints a Markdown table and checks the target of issue 5: every preset builds in
under 5 s on either backend (first build).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

#: Where the report goes without ``--out``: under the working directory, not in the committed benchmarks/results/.
DEFAULT_OUT = Path("runs") / "benchmarks" / "build-cpu.json"
TARGET_S = 5.0

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
from gcnnkit.models.network import build_model
from gcnnkit.models.presets import get_preset
from gcnnkit.core.registry import get_backend
backend, group, preset = sys.argv[1:4]
torch.set_num_threads(int(sys.argv[4]))
options = {"basis": sys.argv[5]} if backend == "escnn" and sys.argv[5] != "default" else None
get_backend(backend)
t1 = time.perf_counter()
size = getattr(get_preset(preset), "image_size", None) or 28
def build():
    return build_model(backend, group, in_channels=1, image_size=size, num_classes=10, preset=preset,
                       backend_options=options)
net = build()
t2 = time.perf_counter()
build()
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_build_s": t2 - t1, "second_build_s": t3 - t2,
                  "params": sum(p.numel() for p in net.parameters()), "image_size": size}))
"""


def measure(backend: str, group: str, preset: str, threads: int, basis: str = "default") -> dict:
    """Times of one case in a fresh interpreter (``error`` instead when it cannot build)."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, backend, group, preset, str(threads), basis], capture_output=True, text=True
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return {"error": last}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    from gcnnkit.core.registry import loadable_backends
    from gcnnkit.models.presets import PRESETS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", default="C4,D4", help="comma-separated groups (default: C4,D4)")
    parser.add_argument("--presets", default="all", help="comma-separated presets (default: all)")
    parser.add_argument("--backends", default=None, help="comma-separated backends (default: every installed one)")
    parser.add_argument(
        "--escnn-basis", default="default", choices=["default", "escnn", "complete"], help="escnn backend_options.basis"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads in each process (default: 1)")
    parser.add_argument("--out", default=None, help="JSON report (default: runs/benchmarks/build-cpu.json)")
    args = parser.parse_args(argv)

    presets = list(PRESETS) if args.presets == "all" else args.presets.split(",")
    backends = args.backends.split(",") if args.backends else loadable_backends()
    groups = args.groups.split(",")
    rows = []
    for preset in presets:
        for group in groups:
            for backend in backends:
                result = {
                    "preset": preset,
                    "group": group,
                    "backend": backend,
                    **measure(backend, group, preset, args.threads, args.escnn_basis),
                }
                rows.append(result)
                if "error" in result:
                    print(f"{preset} {group} {backend}: {result['error']}", file=sys.stderr)
    report = {
        "device": "cpu",
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "escnn_basis": args.escnn_basis,
        "command": "python benchmarks/build_time.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "results": rows,
    }
    out = Path(args.out) if args.out else DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")

    print("| preset | group | backend | params | import (s) | first build (s) | second build (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            continue
        print(
            f"| `{r['preset']}` | {r['group']} | {r['backend']} | {r['params']:,} | {r['import_s']:.2f} "
            f"| {r['first_build_s']:.2f} | {r['second_build_s']:.2f} |"
        )
    built = [r for r in rows if "error" not in r]
    if not built:
        print("nothing built", file=sys.stderr)
        return 1
    slowest = max(built, key=lambda r: r["first_build_s"])
    largest = max(built, key=lambda r: r["params"])
    ok = slowest["first_build_s"] < TARGET_S
    print(
        f"\nslowest first build: {slowest['preset']} on {slowest['group']} ({slowest['backend']}) "
        f"{slowest['first_build_s']:.2f} s; largest model: {largest['preset']} on {largest['group']} "
        f"({largest['backend']}, {largest['params']:,} params) {largest['first_build_s']:.2f} s; "
        f"target < {TARGET_S:.0f} s: {'met' if ok else 'NOT met'}"
    )
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
