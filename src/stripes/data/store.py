"""Torch-free reading of the prepared data (used by ``WindowDataset`` and ``stripes.mi``).

A loaded song is a dict of per-frame arrays of length T: ``roll`` uint8 (T, 48), the bit-packed
bool (T, 384) pianoroll; ``chord`` global chord id; ``mask`` its 12-bit chroma; ``key`` KEY token
id; ``melody`` pitch (0 rest); ``phrase`` section label (all int64).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np



def window_starts(n_frames: int, bars: int, overlap: int) -> range:
    """Start frames of the full windows of W+1 frames (W = 64*bars), hop W+1-overlap (§1.5)."""
    W = 64 * bars
    return range(0, max(0, n_frames - (W + 1) + 1), W + 1 - overlap)


class Prepared:
    """The tables written by ``stripes prepare`` in ``data_dir``."""

    def __init__(self, data_dir: str | Path):
        self.dir = Path(data_dir)
        missing = [n for n in ("settings.json", "split.json", "songs.json", "chords.json")
                   if not (self.dir / n).exists()]
        if missing:
            raise FileNotFoundError(f"{self.dir}: missing {', '.join(missing)}; run `stripes prepare` first")
        self.settings = json.loads((self.dir / "settings.json").read_text())
        self.split = json.loads((self.dir / "split.json").read_text())
        self.table = json.loads((self.dir / "songs.json").read_text())
        self.masks = np.array([m for _, m in json.loads((self.dir / "chords.json").read_text())], np.int64)

    def overlap(self, bars: int) -> int:
        s = self.settings
        return {s["window_bars"]: s["window_overlap"],
                s["long_window_bars"]: s["long_window_overlap"]}.get(bars, 64 * bars // 8)

    def starts(self, song: str, bars: int) -> range:
        return window_starts(self.table[song]["n_frames"], bars, self.overlap(bars))

    def load(self, song: str) -> dict:
        t = self.table[song]
        with np.load(self.dir / "songs" / f"{song}.npz") as z:
            local = z["chord"].astype(np.int64)
            chord = np.asarray(t["chord_ids"], np.int64)[local]
            return {
                "roll": z["roll"],
                "chord": chord,
                "mask": self.masks[chord],
                "key": np.asarray(t["key_ids"], np.int64)[local],
                "melody": z["melody"].astype(np.int64),
                "phrase": z["phrase"].astype(np.int64),
            }


def window(song: dict, start: int, W: int) -> tuple[np.ndarray, dict]:
    """(uint8 0/1 (W, 384) pianoroll, label streams of length W) of the window at ``start``.

    uint8 rather than bool: torch converts uint8 to float ~100x faster than bool."""
    roll = np.unpackbits(song["roll"][start: start + W], axis=1)
    return roll, {k: v[start: start + W] for k, v in song.items() if k != "roll"}
