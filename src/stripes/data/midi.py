"""POP909 MIDI -> binary pianorolls at 16 ticks per quarter (paper-spec §1.3, §1.4).

``load_pianoroll(path)`` returns a bool array (T, 384): frame-major, rows track-major
(MELODY 0-127, BRIDGE 128-255, PIANO 256-383), cropped to start at the earliest note onset over
all three tracks, plus the crop tick and the original-resolution tick->time mapping helpers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

TRACKS = ("MELODY", "BRIDGE", "PIANO")


class SongError(ValueError):
    """A song that cannot be used; the message is the reason recorded in the data report."""


@dataclass
class Pianoroll:
    roll: np.ndarray  # bool (T, 384)
    crop: int  # first onset (in 16-tpq ticks) that became frame 0
    ticks_per_beat: int  # resolution of the source file
    midi: object  # the miditoolkit MidiFile (for tick<->seconds conversion)


def _resample(ticks: np.ndarray, factor: float) -> np.ndarray:
    # [INF] like muspy's adjust_resolution: round onsets and durations separately; a note whose
    # duration rounds to 0 vanishes from the pianoroll.
    return np.rint(ticks * factor).astype(np.int64)


def load_pianoroll(path: str | Path, tpq: int = 16) -> Pianoroll:
    """Read a POP909 MIDI file; raise SongError (with the reason) when it is unusable."""
    import miditoolkit

    path = Path(path)
    try:
        midi = miditoolkit.MidiFile(str(path))
    except Exception as e:  # mido raises many types on truncated/garbled files
        raise SongError(f"unreadable MIDI {path.name}: {type(e).__name__}: {e}") from None
    by_name = {inst.name.strip().upper(): inst for inst in midi.instruments}
    missing = [t for t in TRACKS if t not in by_name]
    if missing:
        raise SongError(f"{path.name}: missing track(s) {', '.join(missing)}")
    factor = tpq / midi.ticks_per_beat
    notes = []
    for k, name in enumerate(TRACKS):
        ns = by_name[name].notes
        if not ns:
            continue
        a = np.array([(n.start, n.end - n.start, n.pitch) for n in ns], dtype=np.int64)
        on, dur = _resample(a[:, 0], factor), _resample(a[:, 1], factor)
        notes.append(np.stack([on, dur, a[:, 2] + 128 * k], axis=1))
    if not notes:
        raise SongError(f"{path.name}: no notes")
    notes = np.concatenate(notes)
    notes = notes[notes[:, 1] > 0]
    if len(notes) == 0:
        raise SongError(f"{path.name}: no notes longer than one tick at {tpq} tpq")
    crop = int(notes[:, 0].min())
    on = notes[:, 0] - crop
    end = on + notes[:, 1]
    T = int(end.max())
    roll = np.zeros((T, 384), dtype=bool)
    # ~1-2k notes a song: slice assignment beats a cumulative sum over all T x 384 cells (5x)
    for a, b, r in zip(on.tolist(), end.tolist(), notes[:, 2].tolist()):
        roll[a:b, r] = True
    return Pianoroll(roll=roll, crop=crop, ticks_per_beat=midi.ticks_per_beat, midi=midi)


def melody_per_tick(roll: np.ndarray) -> np.ndarray:
    """Top active MELODY pitch per frame (0 = silence), int (T,)."""
    mel = roll[:, :128]
    top = 127 - np.argmax(mel[:, ::-1], axis=1)
    return np.where(mel.any(axis=1), top, 0)


def seconds_to_ticks(p: Pianoroll, seconds: np.ndarray, tpq: int = 16) -> np.ndarray:
    """Map times in seconds to frames of the cropped 16-tpq pianoroll (for chord_midi.txt)."""
    tick_times = p.midi.get_tick_to_time_mapping()  # seconds of every source tick
    src = np.searchsorted(tick_times, np.asarray(seconds, dtype=float), side="left")
    return _resample(src, tpq / p.ticks_per_beat) - p.crop
