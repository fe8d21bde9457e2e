"""``WindowDataset``: windows of prepared songs with their context positions (the training contract).

``ds = WindowDataset(data_dir, split, bars, context, max_windows=None)``; ``ds[i]`` is a dict
``x`` float32 (W, 256) melody+bridge, ``y`` float32 (W, 128) piano, ``pos`` float32 (W, L),
``song`` ("001"), ``start`` (start frame in the song); ``ds.context_dim`` = L; W = 64*bars.
Windows are the full W+1-frame windows with hop W+1-overlap (overlap 128 for 16 bars, 512 for 64
bars, from the prepared settings; W/8 for other lengths), of which the first W frames are used.
Songs stay bit-packed in memory; each item unpacks only its window. REP is renumbered per window
(``rep_order`` from the prepared settings unless given).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stripes.contexts import get_context, positions
from stripes.data.store import Prepared, window


class WindowDataset(torch.utils.data.Dataset):
    def __init__(self, data_dir, split: str, bars: int, context: str, max_windows: int | None = None,
                 *, rep_order: str | None = None):
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, not {split!r}")
        self.data_dir = Path(data_dir)
        prepared = Prepared(self.data_dir)
        self.context = get_context(context)
        self.context_dim = self.context.dim
        self.rep_order = rep_order or prepared.settings["rep_order"]
        self.bars, self.W = bars, 64 * bars
        self.songs: dict[str, dict] = {}
        self.index: list[tuple[str, int]] = []
        for sid in prepared.split[split]:
            if max_windows is not None and len(self.index) >= max_windows:
                break
            starts = prepared.starts(sid, bars)
            if len(starts) == 0:
                continue  # shorter than one window (e.g. song 098 at 16 bars)
            self.songs[sid] = prepared.load(sid)
            self.index += [(sid, s) for s in starts]
        if max_windows is not None:
            self.index = self.index[:max_windows]

    def __len__(self) -> int:
        return len(self.index)

    def window(self, i: int) -> tuple[np.ndarray, dict]:
        """(uint8 0/1 (W, 384) pianoroll, per-frame label streams) of window i."""
        sid, s = self.index[i]
        return window(self.songs[sid], s, self.W)

    def __getitem__(self, i: int) -> dict:
        sid, s = self.index[i]
        roll, streams = self.window(i)
        # numpy casts (single-threaded, one copy each): torch's threaded cast of a strided slice
        # was 10x slower on a loaded machine
        return {
            "x": torch.from_numpy(roll[:, :256].astype(np.float32)),
            "y": torch.from_numpy(roll[:, 256:].astype(np.float32)),
            "pos": torch.from_numpy(positions(self.context.name, streams, self.rep_order)),
            "song": sid,
            "start": s,
        }
