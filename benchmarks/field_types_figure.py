"""Draw docs/img/field_types.png: how a 90° rotation moves one field of each kind, and which
nonlinearity keeps that.

Top row: one field of each representation of ``D4`` (regular, quotient, irrep(1,1), trivial) before
and after the rotation ``r1`` (the matrices are gcnnkit's, :mod:`gcnnkit.core.representation`, the
same as escnn's): a permutation field's channels are permuted, an irrep field is rotated as a vector,
a trivial field is unchanged. Bottom row: a pointwise ReLU commutes with the permutation but not with
the rotation of the irrep field; the norm ReLU (``x·relu(|x| − b)/|x|``) commutes with both. The
errors printed in the panel titles are computed here, not typed in.

    python benchmarks/field_types_figure.py --out field_types.png

``--out`` is required, so running the command never overwrites the committed figure; the committed one
was made with ``--out docs/img/field_types.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def norm_relu(x: torch.Tensor, bias: float) -> torch.Tensor:
    """``x · relu(|x| − b) / |x|`` on one field (a vector)."""
    n = x.norm()
    return x * torch.relu(n - bias) / n if n > 0 else x


def draw(out: Path) -> dict[str, float]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gcnnkit.core.registry import get_group

    group = get_group("D4")
    g = group.index("r1")
    reps = [
        ("regular", group.regular()),
        ("quotient(None,2)", group.representation("quotient(None,2)")),
        ("irrep(1,1)", group.irrep(1, 1)),
        ("trivial", group.trivial()),
    ]
    gen = torch.Generator().manual_seed(3)
    fig, axes = plt.subplots(2, len(reps), figsize=(3.2 * len(reps), 5.6))
    errors = {}
    for col, (name, rep) in enumerate(reps):
        x = torch.randn(rep.size, generator=gen, dtype=torch.float64)
        if rep.size == 1:
            x = x.abs()
        rho = rep.matrix(g)
        gx = rho @ x
        ax = axes[0, col]
        if name.startswith("irrep"):
            for v, style, label in ((x, "C0", "x"), (gx, "C1", "r1·x")):
                ax.annotate("", xy=v.tolist(), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": style, "lw": 2})
                ax.text(*(1.08 * v).tolist(), label, color=style)
            lim = 1.3 * float(x.norm())
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.axhline(0, color="0.8", lw=0.5)
            ax.axvline(0, color="0.8", lw=0.5)
        else:
            idx = torch.arange(rep.size)
            ax.bar(idx - 0.2, x, 0.4, label="x")
            ax.bar(idx + 0.2, gx, 0.4, label="r1·x")
            ax.set_xticks(idx.tolist())
            ax.set_xlabel("channel")
            ax.legend(fontsize=7)
        kind = "permutes channels" if rep.is_permutation else "rotates the vector"
        ax.set_title(f"{name} (size {rep.size}):\nr1 {kind}" if rep.size > 1 else f"{name}: unchanged", fontsize=9)
        # which nonlinearity commutes with rho(r1)
        ax = axes[1, col]
        relu_err = float((torch.relu(gx) - rho @ torch.relu(x)).abs().max())
        norm_err = float((norm_relu(gx, 0.3) - rho @ norm_relu(x, 0.3)).abs().max())
        errors[name] = relu_err
        values = [relu_err, norm_err]
        ax.bar([0, 1], [max(v, 1e-17) for v in values], color=["C3", "C2"], bottom=1e-18)
        for i, v in enumerate(values):
            ax.text(i, max(v, 1e-17) * 3, "0 (exact)" if v == 0 else f"{v:.0e}", ha="center", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylim(1e-18, 100)
        ax.set_xticks([0, 1])
        ax.set_xticklabels(["pointwise ReLU", "norm ReLU"], fontsize=8)
        ax.set_title(f"|f(r1·x) − r1·f(x)|: {relu_err:.1e} / {norm_err:.1e}", fontsize=9)
    axes[1, 0].set_ylabel("equivariance error (log)")
    fig.suptitle("D4, rotation r1 (90°): how each field moves, and which nonlinearity keeps equivariance", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="PNG to write (e.g. field_types.png)")
    args = parser.parse_args()
    errors = draw(args.out)
    print(f"wrote {args.out}; pointwise ReLU error per field: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))


if __name__ == "__main__":
    main()
