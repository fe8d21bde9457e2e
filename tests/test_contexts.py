"""Context derivations (paper-spec §2.3, A5, A6, A25) on hand-made chord sequences."""

from __future__ import annotations

import numpy as np
import pytest

from stripes.contexts import (
    CONTEXTS,
    chroma_bits,
    get_context,
    positions,
    rep_renumber,
    scalar_labels,
    transpose_chord,
)
from stripes.data.annotations import mask_of, parse_chord_name


def test_registry_api():
    assert set(CONTEXTS) == {"time", "rep", "key", "bin", "melody", "chord", "phrase", "mcp"}
    assert get_context("bin").dim == 12 and get_context("mcp").dim == 3
    assert get_context("time").regular_grid and not get_context("rep").regular_grid
    with pytest.raises(KeyError, match="unknown context 'nope'"):
        get_context("nope")


def test_rep_rank_vs_first_appearance():
    ids = np.array([40, 40, 7, 7, 395, 40, 12])
    assert rep_renumber(ids, "rank").tolist() == [2, 2, 0, 0, 3, 2, 1]
    assert rep_renumber(ids, "first").tolist() == [0, 0, 1, 1, 2, 0, 3]
    with pytest.raises(ValueError, match="unknown REP order"):
        rep_renumber(ids, "other")


def test_key_normalisation_e_min_in_d_major_is_d_min():
    e_min = parse_chord_name("E:min")
    assert e_min == (4, mask_of([4, 7, 11]))
    assert transpose_chord(*e_min, tonic=2) == parse_chord_name("D:min")
    # wrap-around of the chroma: B:maj (B D# F#) in Gb -> F:maj (F A C)
    assert transpose_chord(*parse_chord_name("B:maj"), tonic=6) == parse_chord_name("F:maj")
    assert transpose_chord(-1, 0, tonic=5) == (-1, 0)  # no-chord stays no-chord


def test_bin_chroma_bits():
    bits = chroma_bits(np.array([mask_of([0, 4, 7]), 0]))
    assert bits.shape == (2, 12)
    assert np.flatnonzero(bits[0]).tolist() == [0, 4, 7] and bits[1].sum() == 0


def _streams():
    return {"chord": np.array([5, 5, 2, 8]), "mask": np.array([145, 145, 0b100010010000, 0]),
            "key": np.array([3, 3, 4, 0]), "melody": np.array([60, 0, 62, 62]),
            "phrase": np.array([26, 26, 27, 23])}


@pytest.mark.parametrize("name", list(CONTEXTS))
def test_positions_shape_and_dtype(name):
    pos = positions(name, _streams())
    assert pos.shape == (4, CONTEXTS[name].dim) and pos.dtype == np.float32


def test_positions_values():
    s = _streams()
    assert positions("time", s)[:, 0].tolist() == [0, 1, 2, 3]
    assert positions("rep", s)[:, 0].tolist() == [1, 1, 0, 2]
    assert positions("rep", s, "first")[:, 0].tolist() == [0, 0, 1, 2]
    assert positions("mcp", s)[2].tolist() == [62, 2, 27]
    assert scalar_labels("bin", s).tolist() == [145, 145, 0b100010010000, 0]
    assert len(set(scalar_labels("mcp", s).tolist())) == 4
