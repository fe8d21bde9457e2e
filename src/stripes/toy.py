"""The D = 2 toy kernel analysis (paper Figs. 2-3, paper-spec §5.6, A22).

Points on the unit circle: 5 contexts xi = C_k = k pi/6, 6 points each, content angle
psi ~ N(C_k, 0.1^2). The query is a point of the middle context. For each f in linspace(0,1,33)
the scores of the query against every key are computed THROUGH the project's PE classes
(RoPE, F-StrIPE1 unpooled = eq. 15, RoPEPool) with one head of dimension 2 and the
frequency set to f: transform (q, k) at positions (xi_q, xi_k), take the dot product.
Output: a (3, 33, P) score array; PNG heatmaps (min-max per panel) and a long CSV.
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .pe.base import PositionalEncoding
from .pe.fstripe1 import FStripe1
from .pe.rope import RoPE
from .pe.ropepool import RoPEPool

PANELS = ("RoPE", "F-StrIPE1", "RoPEPool")


@dataclass
class ToyData:
    psi: np.ndarray  # (P,) content angles
    xi: np.ndarray  # (P,) context angles
    context: np.ndarray  # (P,) context index 0..N-1
    query: int  # index of the query point


def make_toy(n_contexts: int = 5, per_context: int = 6, sigma: float = 0.1, seed: int = 0) -> ToyData:
    rng = np.random.default_rng(seed)
    means = np.arange(1, n_contexts + 1) * math.pi / (n_contexts + 1)
    context = np.repeat(np.arange(n_contexts), per_context)
    psi = rng.normal(means[context], sigma)
    middle = np.flatnonzero(context == n_contexts // 2)
    query = int(middle[np.argsort(psi[middle])[len(middle) // 2]])  # median-psi point of the middle context
    return ToyData(psi, means[context], context, query)


def _pe(name: str) -> PositionalEncoding:
    structural = dict(n_heads=1, head_dim=2, context_dim=1, d_model=2, n_layers=1)
    if name == "RoPE":
        return RoPE(learnable=False, **structural)
    if name == "F-StrIPE1":
        return FStripe1(unpooled=True, **structural)  # the diagonal kernel of eq. 15 / the figure
    if name == "RoPEPool":
        return RoPEPool(**structural)
    raise ValueError(name)


@torch.no_grad()
def pe_scores(name: str, data: ToyData, freqs: np.ndarray) -> np.ndarray:
    """(len(freqs), P): query-key scores of PE ``name`` with every frequency set to f."""
    # auto: the CPU kernels this figure was made with, so its numbers stay bit for bit
    pe = _pe(name).double().eval().use_kernels("auto")
    q = torch.tensor([math.cos(data.psi[data.query]), math.sin(data.psi[data.query])], dtype=torch.float64)
    keys = torch.tensor(np.stack([np.cos(data.psi), np.sin(data.psi)], -1))
    p = len(data.psi)
    qs = q.expand(1, 1, p, 2)  # one (q, k_j) pair per "frame": positions xi_q for q, xi_j for k
    ks = keys.view(1, 1, p, 2)
    pos_q = torch.full((1, p, 1), float(data.xi[data.query]), dtype=torch.float64)
    pos_k = torch.tensor(data.xi, dtype=torch.float64).view(1, p, 1)
    out = np.empty((len(freqs), p))
    for i, f in enumerate(freqs):
        pe.angles.omega.fill_(float(f))
        qt, _ = pe.transform_qk(qs, qs, pe.prepare(pos_q), 0)
        _, kt = pe.transform_qk(ks, ks, pe.prepare(pos_k), 0)
        out[i] = (qt * kt).sum(-1)[0, 0].numpy()
    return out


def closed_forms(data: ToyData, freqs: np.ndarray) -> dict[str, np.ndarray]:
    """The paper's formulas (spec §5.6), for checking ``pe_scores``."""
    f = freqs[:, None]
    dpsi = data.psi[data.query] - data.psi[None]
    dxi = data.xi[data.query] - data.xi[None]
    pq = data.psi[data.query] + f * data.xi[data.query] - math.pi / 4
    pk = data.psi[None] + f * data.xi[None] - math.pi / 4
    return {
        "RoPE": np.cos(dpsi + f * dxi),
        "F-StrIPE1": np.cos(dpsi) * np.cos(f * dxi),
        "RoPEPool": 2 * np.cos(pq) * np.cos(pk),
    }


def compute(n_freqs: int = 33, seed: int = 0) -> tuple[ToyData, np.ndarray, dict[str, np.ndarray]]:
    data = make_toy(seed=seed)
    freqs = np.linspace(0.0, 1.0, n_freqs)
    return data, freqs, {name: pe_scores(name, data, freqs) for name in PANELS}


def _minmax(a: np.ndarray) -> np.ndarray:
    span = a.max() - a.min()
    return (a - a.min()) / span if span > 0 else np.zeros_like(a)


def plot(data: ToyData, freqs: np.ndarray, scores: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(data.psi)
    qcol = int(np.flatnonzero(order == data.query)[0])
    same = data.context[order] == data.context[data.query]
    fig = plt.figure(figsize=(14, 4.2))
    grid = fig.add_gridspec(2, 4, height_ratios=[20, 1], width_ratios=[0.8, 1, 1, 1], hspace=0.05, wspace=0.25)
    ax = fig.add_subplot(grid[:, 0])
    t = np.linspace(0, math.pi, 100)
    ax.plot(np.cos(t), np.sin(t), color="0.85", lw=1)
    ax.scatter(np.cos(data.psi), np.sin(data.psi), c=data.context, cmap="viridis", s=18)
    ax.scatter([math.cos(data.psi[data.query])], [math.sin(data.psi[data.query])], marker="*", s=200,
               c="red", zorder=3, label="query")
    ax.set_aspect("equal")
    ax.set_title("toy data (colour = context)")
    ax.legend(loc="lower left", fontsize=8)
    for i, name in enumerate(PANELS):
        ax = fig.add_subplot(grid[0, i + 1])
        im = ax.imshow(_minmax(scores[name])[:, order], aspect="auto", origin="lower", cmap="magma",
                       extent=(-0.5, len(order) - 0.5, freqs[0], freqs[-1]), vmin=0, vmax=1)
        ax.set_title(name)
        ax.set_xticks([])
        if i == 0:
            ax.set_ylabel("frequency f")
        bar = fig.add_subplot(grid[1, i + 1], sharex=ax)
        bar.bar(np.arange(len(order)), 1, width=0.9, color=np.where(same, "tab:blue", "tab:green"))
        bar.plot([qcol], [0.5], marker="*", color="red", ms=12)
        bar.set_yticks([])
        bar.set_xlabel("keys sorted by content angle ψ")
    fig.text(0.55, -0.06, "bars: blue = key in the query's context, green = other contexts; ★ = the query",
             ha="center", fontsize=9)
    fig.colorbar(im, ax=fig.axes[-2], fraction=0.05, pad=0.02, label="score (min-max per panel)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def write_csv(data: ToyData, freqs: np.ndarray, scores: dict[str, np.ndarray], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["panel", "f", "key", "psi", "xi", "context", "same_context", "is_query", "score", "score_minmax"])
        for name in PANELS:
            norm = _minmax(scores[name])
            for i, f in enumerate(freqs):
                for j in range(len(data.psi)):
                    w.writerow([name, f"{f:.6g}", j, f"{data.psi[j]:.6f}", f"{data.xi[j]:.6f}", int(data.context[j]),
                                int(data.context[j] == data.context[data.query]), int(j == data.query),
                                f"{scores[name][i, j]:.8f}", f"{norm[i, j]:.8f}"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stripes toy", description=__doc__.splitlines()[0])
    ap.add_argument("--out-png", type=Path, default=Path("results/figures/toy_kernels.png"))
    ap.add_argument("--out-csv", type=Path, default=Path("results/figures/toy_kernels.csv"))
    ap.add_argument("--n-freqs", type=int, default=33)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    data, freqs, scores = compute(args.n_freqs, args.seed)
    ref = closed_forms(data, freqs)
    worst = max(float(np.abs(scores[n] - ref[n]).max()) for n in PANELS)
    if worst > 1e-9:
        raise RuntimeError(f"PE-class scores differ from the closed forms by {worst:.3g}")
    plot(data, freqs, scores, args.out_png)
    write_csv(data, freqs, scores, args.out_csv)
    print(f"wrote {args.out_png} and {args.out_csv} ({len(data.psi)} keys x {len(freqs)} frequencies)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
