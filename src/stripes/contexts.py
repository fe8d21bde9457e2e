"""The context registry: which structural position stream each frame gets.

A context maps a window of a prepared song to positions ``pos`` of shape (W, L):
L = 1 for scalar contexts, 3 for melody+chord+phrase, 12 for BIN. Queries and keys use the
same positions (self-attention). Derivations follow paper-spec §2; the per-frame label streams
they read are built by ``stripes.data``.
"""

from __future__ import annotations

from dataclasses import dataclass


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
