"""MIDI -> pianoroll: exact cells on tiny files written with miditoolkit; bad files."""

from __future__ import annotations

import miditoolkit
import numpy as np
import pytest

from stripes.data.midi import SongError, load_pianoroll, melody_per_tick


def write_midi(path, tracks: dict, tpb: int = 480):
    """tracks: name -> [(pitch, start_tick, end_tick)] at resolution tpb."""
    midi = miditoolkit.MidiFile(ticks_per_beat=tpb)
    for name, notes in tracks.items():
        inst = miditoolkit.Instrument(program=0, name=name)
        inst.notes = [miditoolkit.Note(velocity=90, pitch=p, start=s, end=e) for p, s, e in notes]
        midi.instruments.append(inst)
    midi.dump(str(path))
    return path


def test_exact_cells_after_resampling(tmp_path):
    # 480 tpb -> 16 tpq: factor 1/30. First onset at 480 (tick 16) is the crop point.
    path = write_midi(tmp_path / "a.mid", {
        "MELODY": [(60, 480, 960)],          # ticks 16..32 -> frames 0..15
        "BRIDGE": [(64, 960, 1080)],         # ticks 32..36 -> frames 16..19
        "PIANO": [(48, 600, 720), (50, 1920, 1935)],  # 20..24 -> frames 4..7; 64..64.5: rounds to 0 -> dropped
    })
    p = load_pianoroll(path)
    assert p.crop == 16
    assert p.roll.shape == (20, 384)
    expected = np.zeros((20, 384), bool)
    expected[0:16, 60] = True
    expected[16:20, 128 + 64] = True
    expected[4:8, 256 + 48] = True
    np.testing.assert_array_equal(p.roll, expected)
    mel = melody_per_tick(p.roll)
    assert mel[:16].tolist() == [60] * 16 and mel[16:].tolist() == [0] * 4


def test_track_order_by_name_not_position(tmp_path):
    path = write_midi(tmp_path / "b.mid", {
        "PIANO": [(40, 0, 480)], "MELODY": [(70, 0, 480)], "BRIDGE": [(55, 0, 480)]})
    roll = load_pianoroll(path).roll
    assert np.flatnonzero(roll[0]).tolist() == [70, 128 + 55, 256 + 40]


def test_overlapping_same_pitch_merges(tmp_path):
    path = write_midi(tmp_path / "c.mid", {
        "MELODY": [(60, 0, 480), (60, 240, 960)], "BRIDGE": [(70, 0, 30)], "PIANO": [(30, 0, 30)]})
    roll = load_pianoroll(path).roll
    assert roll[:, 60].sum() == 32 and roll.shape[0] == 32


def test_missing_piano_track(tmp_path):
    path = write_midi(tmp_path / "d.mid", {"MELODY": [(60, 0, 480)], "BRIDGE": [(62, 0, 480)]})
    with pytest.raises(SongError, match="missing track.*PIANO"):
        load_pianoroll(path)


def test_empty_file(tmp_path):
    # a valid MIDI file without any track or note
    path = write_midi(tmp_path / "e.mid", {})
    with pytest.raises(SongError, match="e.mid: missing track"):
        load_pianoroll(path)
    # tracks whose only notes vanish at 16 tpq (7 source ticks = 0.23 of a 16th tick)
    path = write_midi(tmp_path / "e2.mid", {"MELODY": [(60, 0, 7)], "BRIDGE": [(61, 0, 7)],
                                            "PIANO": [(62, 0, 7)]})
    with pytest.raises(SongError, match="no notes longer than one tick"):
        load_pianoroll(path)


def test_truncated_file(tmp_path):
    good = write_midi(tmp_path / "f.mid", {"MELODY": [(60, 0, 480)] * 3, "BRIDGE": [], "PIANO": [(40, 0, 480)]})
    bad = tmp_path / "g.mid"
    bad.write_bytes(good.read_bytes()[:30])
    with pytest.raises(SongError, match="unreadable MIDI g.mid"):
        load_pianoroll(bad)
    (tmp_path / "zero.mid").write_bytes(b"")
    with pytest.raises(SongError, match="unreadable"):
        load_pianoroll(tmp_path / "zero.mid")
