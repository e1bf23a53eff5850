"""Equivariant convolutions between any two field types of an exact group, from scratch.

A kernel ``K: [d_out, d_in, k, k]`` from a field of type ``ρ_in`` to one of type ``ρ_out`` gives an
equivariant correlation exactly when ``K(g·p) = ρ_out(g) K(p) ρ_in(g)⁻¹`` for every ``g`` and pixel
``p``. On the pixel grid of an exact group (every element permutes the ``k×k`` pixels) those kernels
are the fixed points of the action ``(g·K)(p) = ρ_out(g) K(g⁻¹p) ρ_in(g)ᵀ``, i.e. the image of its
group average ``P = 1/|G| Σ_g A_g`` (an orthogonal projector). Its dimension is the trace,
``1/|G| Σ_g χ_out(g) χ_in(g) χ_pix(g)`` (``χ_pix(g)``: pixels ``g`` fixes), and :func:`kernel_basis`
asserts that the basis it finds has exactly that size.

* Two permutation representations (trivial, regular, quotient): the fixed kernels are constant on
  the orbits of ``G`` on (output channel, input channel, pixel) triples, so the basis is one tied
  weight per orbit and a block of the bank is one gather (:func:`orbit_index`), as for regular fields.
* Any other pair: an orthonormal basis of ``P``'s image, made canonical (Gram–Schmidt on the columns
  of ``P`` in order, so every machine gets the same basis for the same weights); a block of the bank is
  one basis product.

Both are computed once per (pair of representations, kernel size) and cached for the process.
"""

from __future__ import annotations

import math
from functools import cache, lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from gcnnkit.core.errors import SpecError
from gcnnkit.core.fields import FieldType
from gcnnkit.core.group import Group
from gcnnkit.core.layers import EquivariantConv, eval_cached
from gcnnkit.core.representation import Representation
from gcnnkit_native.filters import pixel_permutations

_RANK_TOL = 1e-8


@lru_cache(maxsize=64)
def pixel_characters(group: Group, kernel_size: int) -> torch.Tensor:
    """``[|G|]`` float64: how many pixels of the ``k×k`` grid each element fixes (``χ_pix``)."""
    perm = pixel_permutations(group, kernel_size)
    return (perm == torch.arange(perm.shape[1])).sum(dim=1).to(torch.float64)


def expected_dimension(rep_out: Representation, rep_in: Representation, kernel_size: int) -> int:
    """``1/|G| Σ_g χ_out(g) χ_in(g) χ_pix(g)``: the dimension of the equivariant kernel space."""
    chi = rep_out.character * rep_in.character * pixel_characters(rep_out.group, kernel_size)
    return round(float(chi.sum()) / rep_out.group.order)


@lru_cache(maxsize=64)
def _pixel_action(group: Group, kernel_size: int) -> torch.Tensor:
    """``[|G|, k²]`` long, ``q = act[g, p]``: the pixel ``p`` of ``K`` is shown at ``q`` in ``T_g K``."""
    perm = pixel_permutations(group, kernel_size)  # (T_g K)[q] = K[perm[g, q]]
    return perm.argsort(dim=1)


@cache
def orbit_index(rep_out: Representation, rep_in: Representation, kernel_size: int) -> tuple[torch.Tensor, int]:
    """For two permutation representations: ``([d_out·d_in·k²] long, n)``: the orbit (``0…n-1``, in
    order of first appearance) of each kernel entry ``(a, b, p)`` under ``(a, b, p) ↦ (σ_out(g)a,
    σ_in(g)b, g·p)``. Equivariant kernels are exactly those constant on every orbit."""
    group, kk = rep_out.group, kernel_size * kernel_size
    so, si, sp = rep_out.permutations, rep_in.permutations, _pixel_action(group, kernel_size)  # [G, d]
    do, di = rep_out.size, rep_in.size
    a = torch.arange(do)[:, None, None]
    b = torch.arange(di)[None, :, None]
    p = torch.arange(kk)[None, None, :]
    images = torch.stack([((so[g][a] * di + si[g][b]) * kk + sp[g][p]).reshape(-1) for g in range(group.order)])
    rep = images.amin(dim=0)  # the orbit of t is {g·t}: its smallest member names it
    _, labels = torch.unique(rep, sorted=True, return_inverse=True)
    first = torch.full((int(labels.max()) + 1,), labels.numel(), dtype=torch.long)
    first.scatter_reduce_(0, labels, torch.arange(labels.numel()), reduce="amin")
    order = torch.argsort(first)  # relabel by first appearance
    relabel = torch.empty_like(order)
    relabel[order] = torch.arange(order.numel())
    index = relabel[labels]
    n = int(order.numel())
    _check_dimension(rep_out, rep_in, kernel_size, n)
    return index, n


def _gram_schmidt(columns: torch.Tensor, rank: int) -> torch.Tensor:
    """Orthonormalise ``columns`` ``[N, M]`` in order, skipping dependent ones, up to ``rank`` vectors:
    ``[rank, N]``. Deterministic, so the basis (hence what a weight means) is the same everywhere."""
    n, found = columns.shape[0], 0
    basis = columns.new_zeros(rank, n)
    live = (columns.abs().sum(dim=0) > _RANK_TOL).nonzero().flatten().tolist()
    for j in live:
        if found == rank:
            break
        v = columns[:, j].clone()
        for _ in range(2):  # twice is enough (Kahan)
            v -= basis[:found].T @ (basis[:found] @ v)
        norm = v.norm()
        if norm > 1e-6:
            basis[found] = v / norm
            found += 1
    return basis[:found]


@cache
def kernel_basis(rep_out: Representation, rep_in: Representation, kernel_size: int) -> torch.Tensor:
    """``[n, d_out, d_in, k, k]`` float64: an orthonormal basis of the equivariant kernels (module docstring),
    ``n`` equal to the character formula (asserted)."""
    group, k = rep_out.group, kernel_size
    kk, do, di = k * k, rep_out.size, rep_in.size
    act = _pixel_action(group, k)
    # P = 1/|G| Σ_g ρ_out(g) ⊗ ρ_in(g) ⊗ M_g, M_g[q, p] = 1 where q = g·p (vec(T_g K) = M_g vec(K))
    pix = torch.zeros(group.order, kk, kk, dtype=torch.float64)
    pix.scatter_(1, act[:, None, :], 1.0)
    proj = torch.einsum("gab,gcd,gqp->acqbdp", rep_out.matrices, rep_in.matrices, pix).reshape(do * di * kk, -1)
    proj /= group.order
    expected = expected_dimension(rep_out, rep_in, k)
    basis = _gram_schmidt(proj, expected)
    _check_dimension(rep_out, rep_in, k, basis.shape[0])
    return basis.reshape(-1, do, di, k, k)


def _check_dimension(rep_out: Representation, rep_in: Representation, kernel_size: int, found: int) -> None:
    expected = expected_dimension(rep_out, rep_in, kernel_size)
    if found != expected:
        raise RuntimeError(
            f"equivariant kernel basis {rep_in.name} → {rep_out.name} ({kernel_size}×{kernel_size}) on "
            f"{rep_out.group.name} has {found} elements, the character formula says {expected}"
        )


@cache
def invariant_vectors(rep: Representation) -> torch.Tensor:
    """``[m, d]`` float64: a basis of the vectors ``ρ`` fixes (where a bias may live). Permutation
    representations: the indicator of each channel orbit (a bias repeated over it, as regular fields do);
    others: an orthonormal basis of ``1/|G| Σ_g ρ(g)``'s image."""
    if rep.is_permutation:
        orbit = rep.permutations.min(dim=0).values  # smallest channel each channel is moved to = its orbit
        labels = torch.unique(orbit)
        return (orbit[None, :] == labels[:, None]).to(torch.float64)
    avg = rep.matrices.mean(dim=0)
    return _gram_schmidt(avg, round(float(avg.trace())))


def _grouped(reps: tuple[Representation, ...]) -> tuple[list[Representation], list[list[int]], torch.Tensor]:
    """Distinct representations in order of first appearance, the fields of each, and the channel order
    ``[D]`` that lists the channels type by type (field order within a type)."""
    types: list[Representation] = []
    fields: list[list[int]] = []
    for i, r in enumerate(reps):
        if r not in types:
            types.append(r)
            fields.append([])
        fields[types.index(r)].append(i)
    offsets = [0]
    for r in reps:
        offsets.append(offsets[-1] + r.size)
    order = [c for members in fields for i in members for c in range(offsets[i], offsets[i + 1])]
    return types, fields, torch.tensor(order, dtype=torch.long)


class SteerableConv(EquivariantConv):
    """``[B, D_in, H, W]`` (or ``[B, C, |G|, H, W]``) → ``[B, D_out, H', W']`` (``[B, C, |G|, H', W']``
    for an all-regular output): a convolution whose kernel between each pair of fields lies in the
    equivariant space of their representations (module docstring).

    Parameters: ``weight_{u}_{v}`` ``[n_u, n_v, n_basis]`` per pair of distinct output/input
    representations (``u``, ``v`` index them in order of first appearance), ``bias_{u}`` ``[n_u, m_u]``
    on the vectors each output representation fixes (none for non-trivial irreps).
    """

    def __init__(
        self,
        group: Group,
        in_type: FieldType,
        out_type: FieldType,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if not group.exact:
            raise SpecError(_interpolated_refusal(group, in_type, out_type))
        self.group, self.in_type, self.out_type = group, in_type, out_type
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        in_reps, out_reps = in_type.field_reps(group), out_type.field_reps(group)
        self.in_size, self.out_size = sum(r.size for r in in_reps), sum(r.size for r in out_reps)
        self.out_types, out_fields, out_order = _grouped(out_reps)
        self.in_types, in_fields, in_order = _grouped(in_reps)
        self.out_counts = [len(f) for f in out_fields]
        self.in_counts = [len(f) for f in in_fields]
        # grouped → actual channel order (None when it already is)
        self.register_buffer("out_perm", _inverse_or_none(out_order), persistent=False)
        self.register_buffer("in_perm", _inverse_or_none(in_order), persistent=False)
        fan_in = self.in_size * kernel_size * kernel_size
        self._pairs: list[tuple[int, int, str]] = []  # (u, v, "orbit" | "basis")
        for u, ro in enumerate(self.out_types):
            for v, ri in enumerate(self.in_types):
                if ro.is_permutation and ri.is_permutation:
                    index, n = orbit_index(ro, ri, kernel_size)
                    self.register_buffer(f"orbit_{u}_{v}", index, persistent=False)
                    gather = _block_gather(index, n, self.out_counts[u], self.in_counts[v], ro.size, ri.size)
                    self.register_buffer(f"gather_{u}_{v}", gather, persistent=False)
                    std = math.sqrt(2.0 / fan_in)
                    self._pairs.append((u, v, "orbit"))
                else:
                    basis = kernel_basis(ro, ri, kernel_size)
                    n = basis.shape[0]
                    self.register_buffer(f"basis_{u}_{v}", basis.to(torch.float32), persistent=False)
                    entries = ro.size * ri.size * kernel_size * kernel_size
                    std = math.sqrt(2.0 / fan_in * entries / max(n, 1))
                    self._pairs.append((u, v, "basis"))
                weight = torch.randn(self.out_counts[u], self.in_counts[v], n) * std
                self.register_parameter(f"weight_{u}_{v}", nn.Parameter(weight))
        self._bias_types: list[int] = []
        if bias:
            for u, ro in enumerate(self.out_types):
                vectors = invariant_vectors(ro)
                if vectors.shape[0]:
                    self.register_buffer(f"bias_basis_{u}", vectors.to(torch.float32), persistent=False)
                    self.register_parameter(
                        f"bias_{u}", nn.Parameter(torch.zeros(self.out_counts[u], vectors.shape[0]))
                    )
                    self._bias_types.append(u)
        self.has_bias = bool(self._bias_types)
        self._cache: tuple | None = None

    # ------------------------------------------------------------ filter bank
    def _block(self, u: int, v: int, how: str) -> torch.Tensor:
        w = getattr(self, f"weight_{u}_{v}")
        nu, nv = w.shape[:2]
        do, di, k = self.out_types[u].size, self.in_types[v].size, self.kernel_size
        if how == "orbit":  # one gather, indices precomputed in the block's final order
            block = w.reshape(-1).index_select(0, getattr(self, f"gather_{u}_{v}"))
            return block.reshape(nu * do, nv * di, k, k)
        basis = getattr(self, f"basis_{u}_{v}").to(w.dtype)
        block = torch.einsum("uvb,bn->uvn", w, basis.reshape(basis.shape[0], do * di * k * k))
        block = block.reshape(nu, nv, do, di, k, k).permute(0, 2, 1, 3, 4, 5)
        return block.reshape(nu * do, nv * di, k, k)

    def _bank(self) -> torch.Tensor:
        rows = []
        for u in range(len(self.out_types)):
            blocks = [self._block(u, v, how) for uu, v, how in self._pairs if uu == u]
            rows.append(blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1))
        bank = rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)
        if self.out_perm is not None:
            bank = bank.index_select(0, self.out_perm)
        if self.in_perm is not None:
            bank = bank.index_select(1, self.in_perm)
        return bank.contiguous(memory_format=torch.channels_last) if self.channels_last else bank

    def _bias(self) -> torch.Tensor | None:
        if not self.has_bias:
            return None
        ref = getattr(self, f"bias_{self._bias_types[0]}")
        parts = []
        for u, ro in enumerate(self.out_types):
            if u in self._bias_types:
                b = getattr(self, f"bias_{u}")
                parts.append((b @ getattr(self, f"bias_basis_{u}").to(b.dtype)).reshape(-1))
            else:
                parts.append(ref.new_zeros(self.out_counts[u] * ro.size))
        bias = torch.cat(parts)
        return bias if self.out_perm is None else bias.index_select(0, self.out_perm)

    def _expanded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        sources = [p for _, p in self.named_parameters(recurse=False)]
        return eval_cached(self, sources, lambda: (self._bank(), self._bias()))

    def filter_bank(self) -> torch.Tensor:
        """``[D_out, D_in, k, k]``: the kernels in the channel order of the field types (cached in eval mode)."""
        return self._expanded()[0]

    def expanded_bias(self) -> torch.Tensor | None:
        """``[D_out]``: zero on fields that fix no vector (non-trivial irreps), or ``None``."""
        return self._expanded()[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5:  # a group map: its flattened layout is the steerable one
            x = x.flatten(1, 2)
        bank, bias = self._expanded()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x, bank, bias, self.stride, self.padding, self.dilation)
        if self.out_type.kind == "group":
            return y.reshape(y.shape[0], self.out_type.channels, self.group.order, *y.shape[-2:])
        return y

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    def extra_repr(self) -> str:
        return (
            f"group={self.group.name}, in={self.in_type}, out={self.out_type}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, bias={self.has_bias}"
        )


def _block_gather(orbit: torch.Tensor, n: int, nu: int, nv: int, do: int, di: int) -> torch.Tensor:
    """``[nu·do·nv·di·k²]`` long: for the block ``[(o, a), (i, b), p]`` of a weight ``[nu, nv, n]``, the flat
    index ``(o·nv + i)·n + orbit[a, b, p]`` (so the block is one ``index_select``, no permute copy)."""
    orbit = orbit.reshape(do, di, -1)
    o = torch.arange(nu)[:, None, None, None, None]
    i = torch.arange(nv)[None, None, :, None, None]
    return ((o * nv + i) * n + orbit[None, :, None, :, :]).reshape(-1)


def _inverse_or_none(order: torch.Tensor) -> torch.Tensor | None:
    if torch.equal(order, torch.arange(order.numel())):
        return None
    return torch.argsort(order)


def _interpolated_refusal(group: Group, in_type: FieldType, out_type: FieldType) -> str:
    return (
        f"group {group.name} is interpolated on the native backend, which keeps regular fields there; "
        f"{in_type} → {out_type} needs model.backend=escnn"
    )
