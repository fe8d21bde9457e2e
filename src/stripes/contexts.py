"""The context registry: which structural position stream each frame gets.

A context maps a window of a prepared song to positions ``pos`` of shape (W, L):
L = 1 for scalar contexts, 3 for melody+chord+phrase, 12 for BIN. Queries and keys use the
same positions (self-attention). Derivations follow paper-spec §2; the per-frame label streams
they read are built by ``stripes.data``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Context:
    name: str
    dim: int
    regular_grid: bool
    description: str


CONTEXTS: dict[str, Context] = {
    c.name: c
    for c in [
        Context("time", 1, True, "TIME: frame index within the window (0..W-1)"),
        Context("rep", 1, False, "REP: global chord ids renumbered within the window"),
        Context("key", 1, False, "KEY: chord token after transposing by the song's tonic"),
        Context("bin", 12, False, "BIN: 12-bit chord chroma vector"),
        Context("melody", 1, False, "F-StrIPE level M: melody pitch per 16th (0 = rest)"),
        Context("chord", 1, False, "F-StrIPE level C: global chord id"),
        Context("phrase", 1, False, "F-StrIPE level P: section label"),
        Context("mcp", 3, False, "F-StrIPE levels M+C+P as a vector position"),
    ]
}


def get_context(name: str) -> Context:
    try:
        return CONTEXTS[name]
    except KeyError:
        raise KeyError(f"unknown context {name!r}; known: {', '.join(CONTEXTS)}") from None


# ---------------------------------------------------------------------------------------------
# Derivations. A window's per-frame label streams (built by stripes.data) are a dict of int
# arrays of length W: "chord" (global chord id), "mask" (12-bit chroma of that chord, 0 for
# no-chord), "key" (KEY token id, see key_token), "melody" (pitch, 0 = rest), "phrase"
# (section label 0..51).


def rep_renumber(chord_ids: np.ndarray, order: str = "rank") -> np.ndarray:
    """REP: renumber global chord ids within one window (paper-spec §2.3, A6).

    "rank": each id becomes its rank among the window's distinct ids (increasing global id),
    the literal "numerical order". "first": ids numbered by first appearance in the window.
    The no-chord id is renumbered like any other id (A25).
    """
    ids = np.asarray(chord_ids)
    uniq, first_idx, inverse = np.unique(ids, return_index=True, return_inverse=True)
    if order == "rank":
        return inverse.reshape(ids.shape)
    if order == "first":
        # rank of each distinct id's first position = its first-appearance number
        rank_of_uniq = np.empty(len(uniq), dtype=np.int64)
        rank_of_uniq[np.argsort(first_idx)] = np.arange(len(uniq))
        return rank_of_uniq[inverse].reshape(ids.shape)
    raise ValueError(f"unknown REP order {order!r}; use 'rank' or 'first'")


def transpose_chord(root: int, mask: int, tonic: int) -> tuple[int, int]:
    """KEY: move a chord (root, 12-bit chroma) by -tonic so the song's key becomes C.

    No-chord (root -1, mask 0) stays no-chord. E:min in D major -> D:min.
    """
    if root < 0:
        return -1, 0
    k = tonic % 12
    mask = ((mask >> k) | (mask << (12 - k))) & 0xFFF
    return (root - k) % 12, mask


def chroma_bits(mask: np.ndarray) -> np.ndarray:
    """BIN: 12-bit chroma mask per frame -> (W, 12) of 0/1 (bit k = pitch class k)."""
    mask = np.asarray(mask, dtype=np.int64)
    return (mask[..., None] >> np.arange(12)) & 1


def labels_for(name: str, streams: dict, rep_order: str = "rank") -> np.ndarray:
    """Integer label per frame (W, L) of context ``name`` for one window."""
    W = len(streams["chord"])
    if name == "time":
        out = np.arange(W)[:, None]
    elif name == "rep":
        out = rep_renumber(streams["chord"], rep_order)[:, None]
    elif name == "key":
        out = np.asarray(streams["key"])[:, None]
    elif name == "bin":
        out = chroma_bits(streams["mask"])
    elif name in ("melody", "chord", "phrase"):
        out = np.asarray(streams[name])[:, None]
    elif name == "mcp":
        out = np.stack([streams["melody"], streams["chord"], streams["phrase"]], axis=1)
    else:
        get_context(name)  # raises the KeyError naming the known contexts
        raise NotImplementedError(name)
    return out.astype(np.int64)


def positions(name: str, streams: dict, rep_order: str = "rank") -> np.ndarray:
    """Context positions of one window, float32 (W, L) (integer labels stored as float)."""
    return labels_for(name, streams, rep_order).astype(np.float32)


def scalar_labels(name: str, streams: dict, rep_order: str = "rank") -> np.ndarray:
    """One integer per frame (W,) for histogramming (MI): vectors are packed into one integer."""
    lab = labels_for(name, streams, rep_order)
    if lab.shape[1] == 1:
        return lab[:, 0]
    if name == "bin":
        return (lab << np.arange(12)).sum(axis=1)
    # mcp: melody < 256, chord < 4096, phrase < 64 -> a unique integer
    return (lab[:, 0] << 20) | (lab[:, 1] << 8) | lab[:, 2]
