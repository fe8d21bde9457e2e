"""Listening and viewing material for evaluated windows: MIDI files and pianoroll figures.

For one window this writes, under ``EVALDIR/samples/``:

* ``<setting>_<song>_<start>_pred.mid``: MELODY, BRIDGE (the input) and the predicted PIANO;
* ``<setting>_<song>_<start>_target.mid``: MELODY, BRIDGE and the ground-truth PIANO;
* ``<setting>_<song>_<start>.png``: predicted vs target piano roll (and their overlap);
* ``<setting>_<song>_<start>_{pred,target}.wav``: each MIDI file rendered to audio
  (:mod:`stripes.audio`: FluidSynth with a General MIDI soundfont, else a numpy synthesiser),
  and ``audio.json``, which renderer wrote each WAV.

Pianorolls are at 16 ticks per quarter note, which is also the MIDI resolution
(``ticks_per_beat = 16``), so one frame is one MIDI tick. A note is a maximal run of active
frames of one pitch (onset where the roll switches on).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

TICKS_PER_BEAT = 16
TRACKS = ("MELODY", "BRIDGE", "PIANO")
# General MIDI programs (0-based): acoustic grand piano for all three, as POP909 does
PROGRAMS = {"MELODY": 0, "BRIDGE": 0, "PIANO": 0}


def roll_to_notes(roll: np.ndarray, velocity: int = 80) -> list[tuple[int, int, int, int]]:
    """Runs of active frames -> notes ``(start, end, pitch, velocity)`` in ticks (end exclusive).

    Args:
        roll: (T, 128) binary pianoroll.
    """
    x = np.asarray(roll) > 0
    padded = np.zeros((x.shape[0] + 2, x.shape[1]), dtype=np.int8)
    padded[1:-1] = x
    diff = np.diff(padded, axis=0)  # +1 at onsets, -1 one past the last active frame
    notes = []
    for pitch in range(x.shape[1]):
        starts = np.flatnonzero(diff[:, pitch] == 1)
        ends = np.flatnonzero(diff[:, pitch] == -1)
        notes += [(int(s), int(e), pitch, velocity) for s, e in zip(starts, ends)]
    notes.sort()
    return notes


def write_midi(path: str | Path, tracks: dict[str, np.ndarray], tempo: float = 120.0) -> Path:
    """Write named (T, 128) pianorolls as instruments of one MIDI file (16 ticks per beat)."""
    from miditoolkit.midi import containers as ct
    from miditoolkit.midi.parser import MidiFile

    midi = MidiFile(ticks_per_beat=TICKS_PER_BEAT)
    midi.tempo_changes = [ct.TempoChange(float(tempo), 0)]
    midi.time_signature_changes = [ct.TimeSignature(4, 4, 0)]
    end = 0
    for name, roll in tracks.items():
        inst = ct.Instrument(program=PROGRAMS.get(name, 0), is_drum=False, name=name)
        inst.notes = [ct.Note(velocity=v, pitch=p, start=s, end=e) for s, e, p, v in roll_to_notes(roll)]
        end = max(end, int(np.asarray(roll).shape[0]))
        midi.instruments.append(inst)
    midi.max_tick = end
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.dump(str(path))
    return path


def plot_rolls(path: str | Path, pred: np.ndarray, target: np.ndarray, title: str = "") -> Path:
    """PNG with the target piano, the predicted piano and their overlay (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = np.asarray(pred) > 0
    target = np.asarray(target) > 0
    rows = np.flatnonzero((pred | target).any(axis=0))
    lo, hi = (int(rows.min()) - 2, int(rows.max()) + 3) if rows.size else (36, 96)
    lo, hi = max(lo, 0), min(hi, 128)
    overlay = np.zeros(target.shape + (3,), dtype=np.float32) + 1.0
    overlay[target & ~pred] = (0.2, 0.4, 0.9)  # missed: blue
    overlay[pred & ~target] = (0.9, 0.3, 0.2)  # extra: red
    overlay[pred & target] = (0.1, 0.1, 0.1)  # hit: black
    width = min(18.0, 4.0 + target.shape[0] / 128)
    fig, axes = plt.subplots(3, 1, figsize=(width, 8), sharex=True)
    for ax, img, label in (
        (axes[0], target, "target piano"),
        (axes[1], pred, "predicted piano"),
    ):
        ax.imshow(img[:, lo:hi].T, origin="lower", aspect="auto", cmap="Greys", interpolation="nearest",
                  extent=(0, img.shape[0], lo, hi))
        ax.set_ylabel("pitch")
        ax.set_title(label, fontsize=9)
    axes[2].imshow(overlay[:, lo:hi].transpose(1, 0, 2), origin="lower", aspect="auto", interpolation="nearest",
                   extent=(0, target.shape[0], lo, hi))
    axes[2].set_title("overlay: black hit, blue missed, red extra", fontsize=9)
    axes[2].set_ylabel("pitch")
    axes[2].set_xlabel("tick (16 per quarter)")
    for ax in axes:
        for bar in range(0, target.shape[0] + 1, 64):
            ax.axvline(bar, color="0.8", lw=0.5)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_sample(
    out_dir: str | Path, setting: str, song: str, start: int, x: np.ndarray, pred: np.ndarray, target: np.ndarray
) -> list[Path]:
    """Both MIDI files and the PNG of one window.

    Args:
        out_dir: the samples folder.
        setting: e.g. ``test_16``.
        x: (T, 256) input (melody rows 0-127, bridge rows 128-255).
        pred, target: (T, 128) binary piano rolls.
    """
    out = Path(out_dir)
    stem = f"{setting}_{song}_{int(start)}"
    melody, bridge = np.asarray(x)[:, :128], np.asarray(x)[:, 128:256]
    return [
        write_midi(out / f"{stem}_pred.mid", {"MELODY": melody, "BRIDGE": bridge, "PIANO": pred}),
        write_midi(out / f"{stem}_target.mid", {"MELODY": melody, "BRIDGE": bridge, "PIANO": target}),
        plot_rolls(out / f"{stem}.png", pred, target, title=f"{setting} song {song} start {start}"),
    ]


def pick(n_windows: int, n_samples: int) -> list[int]:
    """Evenly spread window indices (deterministic), at most ``n_samples``."""
    if n_windows <= 0 or n_samples <= 0:
        return []
    return sorted(set(np.linspace(0, n_windows - 1, min(n_samples, n_windows)).round().astype(int).tolist()))


def render_audio(out_dir: str | Path, midis: Iterable[Path]) -> list[Path]:
    """A WAV next to each MIDI file and ``audio.json`` (renderer per WAV); returns the paths.

    A rendering error is recorded in ``audio.json`` and printed, never raised: the metrics of
    an evaluation matter more than its listening material. ``$STRIPES_AUDIO=off`` skips it.
    """
    import json
    import os
    import sys

    from stripes import audio

    if os.environ.get("STRIPES_AUDIO", "").lower() == "off":
        return []
    out = Path(out_dir)
    renderers: dict[str, str] = {}
    errors: dict[str, str] = {}
    paths: list[Path] = []
    for mid in midis:
        wav = Path(mid).with_suffix(".wav")
        try:
            renderers[wav.name] = audio.render(mid, wav)
            paths.append(wav)
        except Exception as exc:  # noqa: BLE001 - recorded, see the docstring
            errors[wav.name] = repr(exc)
            print(f"stripes.samples: no audio for {Path(mid).name}: {exc!r}", file=sys.stderr)
    sf = audio.soundfont() if "fluidsynth" in renderers.values() else None
    record = {"sample_rate": audio.SAMPLE_RATE, "tail_s": audio.TAIL_S, "soundfont": str(sf) if sf else None,
              "renderers": renderers, "errors": errors}
    manifest = out / "audio.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return paths + [manifest]


def write_samples(out_dir: str | Path, items: Iterable[dict], audio_settings: Iterable[str] | None = None) -> list[Path]:
    """Write every item (keys setting, song, start, x, pred, target) and its audio; returns the paths.

    ``audio_settings``: the settings whose samples are rendered to audio (None: all); a 64-bar
    WAV is about 6 MB, so a CPU study may render the 16-bar ones only (``eval.audio_settings``)."""
    paths: list[Path] = []
    for it in items:
        paths += write_sample(out_dir, it["setting"], it["song"], it["start"], it["x"], it["pred"], it["target"])
    keep = None if audio_settings is None else set(audio_settings)
    mids = [p for p in paths if p.suffix == ".mid" and (keep is None or any(p.name.startswith(f"{s}_") for s in keep))]
    return paths + render_audio(out_dir, mids)
