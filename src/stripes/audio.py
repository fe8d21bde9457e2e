"""Sample MIDI -> WAV, so that a sample can be heard in MLflow's artifact viewer.

Two renderers give the same file layout (mono, 16-bit, :data:`SAMPLE_RATE` Hz, the MIDI file's
duration plus :data:`TAIL_S` seconds, peak at :data:`PEAK`):

* ``fluidsynth``: the FluidSynth command-line synthesiser with a General MIDI soundfont (Debian:
  ``apt-get install fluidsynth fluid-soundfont-gm``, which ``make smoke`` / ``make setup`` run as
  root). Used when the binary and a soundfont exist (``$STRIPES_SOUNDFONT`` or Debian's paths).
* ``numpy``: a small additive synthesiser, the fallback, so that a sample is never silent or
  missing on a machine without FluidSynth.

``$STRIPES_AUDIO`` picks one: ``auto`` (default), ``fluidsynth`` or ``numpy``; ``off`` makes
:func:`stripes.samples.render_audio` skip the audio.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import wave
from collections import OrderedDict
from pathlib import Path

import numpy as np

from stripes.fileio import atomic_path, atomic_write_text

SAMPLE_RATE = 22050
# Fixed tail after the last note-off: room for the release of the last notes, and the same
# length whichever renderer ran (FluidSynth's own tail is about 2.5 s and not configurable).
TAIL_S = 1.0
PEAK = 0.9  # peak normalisation: prediction and target play at comparable loudness
FADE_S = 0.05  # fade-out over the cut tail of a FluidSynth rendering, so it ends without a click
SOUNDFONTS = (
    # Debian's alternatives link first: whatever GM soundfont package the machine has.
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/sounds/sf3/default-GM.sf3",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
)
RENDERERS = ("fluidsynth", "numpy")

# numpy voice: harmonics 1-4 with falling amplitudes (a soft, clearly pitched tone), a 10 ms
# attack (no click), an exponential decay (piano-like: long notes fade) and a short release.
PARTIALS = (1.0, 0.45, 0.2, 0.1)
ATTACK_S = 0.01
DECAY_S = 1.2
RELEASE_S = 0.15
TABLE_SIZE = 4096


class RenderError(RuntimeError):
    pass


def soundfont() -> Path | None:
    """The General MIDI soundfont FluidSynth uses here, or None."""
    env = os.environ.get("STRIPES_SOUNDFONT")
    for cand in ([env] if env else []) + list(SOUNDFONTS):
        p = Path(cand)
        if p.is_file():
            return p.resolve()
    return None


def fluidsynth_available() -> bool:
    return shutil.which("fluidsynth") is not None and soundfont() is not None


def midi_duration(midi) -> float:
    """Seconds from the start to the file's last event (miditoolkit's ``max_tick``)."""
    return float(midi.get_tick_to_time_mapping()[midi.max_tick])


def n_frames_for(duration_s: float, rate: int = SAMPLE_RATE) -> int:
    return int(round((duration_s + TAIL_S) * rate))


def _write_wav(path: Path, mono: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    peak = float(np.max(np.abs(mono))) if mono.size else 0.0
    x = mono * (PEAK / peak) if peak > 0 else mono
    pcm = np.clip(np.round(x * 32767), -32768, 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(frames, channels) float in [-1, 1] and the sample rate; 16-bit PCM only."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise RenderError(f"{path}: {8 * w.getsampwidth()}-bit WAV, expected 16-bit")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return data.reshape(-1, w.getnchannels()).astype(np.float64) / 32768.0, w.getframerate()


# ----------------------------------------------------------------------------- renderers


def _voice_table() -> np.ndarray:
    phase = 2 * np.pi * np.arange(TABLE_SIZE) / TABLE_SIZE
    return sum(a * np.sin(k * phase) for k, a in enumerate(PARTIALS, start=1))


def synth_numpy(midi, n_frames: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float signal of every non-drum note of a miditoolkit MidiFile."""
    out = np.zeros(n_frames, dtype=np.float64)
    table = _voice_table()
    t2s = midi.get_tick_to_time_mapping()
    last = len(t2s) - 1
    release = int(RELEASE_S * rate)
    for inst in midi.instruments:
        if inst.is_drum:
            continue
        for note in inst.notes:
            start = int(round(t2s[min(note.start, last)] * rate))
            held = max(int(round(t2s[min(note.end, last)] * rate)) - start, 1)
            n = min(held + release, n_frames - start)
            if n <= 0:
                continue
            t = np.arange(n) / rate
            freq = 440.0 * 2.0 ** ((note.pitch - 69) / 12.0)
            # wavetable lookup: one gather per sample instead of one sine per partial
            idx = (np.floor(freq * TABLE_SIZE * t) % TABLE_SIZE).astype(np.intp)
            env = np.minimum(t / ATTACK_S, 1.0) * np.exp(-t / DECAY_S)
            if n > held:  # release: linear from the level at note-off down to zero
                env[held:] = env[held - 1] * np.linspace(1.0, 0.0, n - held + 1)[1:]
            out[start:start + n] += (note.velocity / 127.0) * env * table[idx]
    return out


def _fluidsynth(midi_path: Path, n_frames: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    sf = soundfont()
    exe = shutil.which("fluidsynth")
    if sf is None or exe is None:
        raise RenderError("fluidsynth or a General MIDI soundfont is not installed")
    with tempfile.TemporaryDirectory(prefix="stripes-fluidsynth-") as tmp:
        raw = Path(tmp) / "out.wav"
        cmd = [exe, "-n", "-i", "-q", "-F", str(raw), "-T", "wav", "-O", "s16", "-r", str(rate),
               str(sf), str(midi_path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not raw.is_file():
            raise RenderError(f"fluidsynth exited {proc.returncode}: {(proc.stderr or proc.stdout)[-500:]}")
        frames, got_rate = read_wav(raw)
    if got_rate != rate:
        raise RenderError(f"fluidsynth wrote {got_rate} Hz, asked for {rate}")
    mono = frames.mean(axis=1)
    if mono.size >= n_frames:
        mono = mono[:n_frames].copy()
        fade = min(int(FADE_S * rate), n_frames)
        if fade:
            mono[n_frames - fade:] *= np.linspace(1.0, 0.0, fade)
    else:
        mono = np.concatenate([mono, np.zeros(n_frames - mono.size)])
    return mono


# The last few renderings of this process, by (MIDI file bytes, renderer choice, soundfont,
# FluidSynth binary): a target window is the same MIDI file for every seed of a (pe, context), whose
# runs share one process with study.fuse_train_eval (FluidSynth takes ~0.7 s for a 16-bar window).
_RENDERED: OrderedDict[tuple, tuple[str, np.ndarray]] = OrderedDict()
_RENDERED_MAX = 4


def render(midi_path: str | Path, wav_path: str | Path, renderer: str | None = None) -> str:
    """Render one MIDI file to a mono 16-bit WAV; returns the renderer that wrote it.

    ``renderer``: ``auto`` (FluidSynth when installed and it produced sound, else numpy),
    ``fluidsynth`` (error when it cannot) or ``numpy``; default ``$STRIPES_AUDIO`` or ``auto``.
    A file with the same bytes as one of the last few rendered in this process is not rendered
    again: its WAV is written from that rendering.
    """
    choice = (renderer or os.environ.get("STRIPES_AUDIO") or "auto").lower()
    if choice not in ("auto", *RENDERERS):
        raise ValueError(f"unknown renderer {choice!r} (auto, {', '.join(RENDERERS)})")
    midi_path, wav_path = Path(midi_path), Path(wav_path)
    key = (hashlib.sha256(midi_path.read_bytes()).digest(), choice, soundfont(), shutil.which("fluidsynth"))
    if key not in _RENDERED:
        _RENDERED[key] = _render_mono(midi_path, choice)
        while len(_RENDERED) > _RENDERED_MAX:
            _RENDERED.popitem(last=False)
    _RENDERED.move_to_end(key)
    used, mono = _RENDERED[key]
    _write_wav(wav_path, mono)
    return used


def _render_mono(midi_path: Path, choice: str) -> tuple[str, np.ndarray]:
    """(renderer that ran, mono samples) of one MIDI file (see :func:`render`)."""
    from miditoolkit.midi.parser import MidiFile

    midi = MidiFile(str(midi_path))
    n = n_frames_for(midi_duration(midi))
    has_notes = any(inst.notes for inst in midi.instruments if not inst.is_drum)
    if choice == "fluidsynth" or (choice == "auto" and fluidsynth_available()):
        try:
            mono = _fluidsynth(midi_path, n)
            # a soundfont without the needed preset renders silence: that is a failure here
            if has_notes and not np.any(mono):
                raise RenderError("fluidsynth rendered silence")
            return "fluidsynth", mono
        except (RenderError, OSError, subprocess.SubprocessError) as exc:
            if choice == "fluidsynth":
                raise
            print(f"stripes.audio: {exc}; using the numpy synthesiser for {midi_path.name}", file=sys.stderr)
    return "numpy", synth_numpy(midi, n)


# ----------------------------------------------------------------------------- listening page

PAGE_RATE = 11025  # the page's clips: half the WAVs' rate keeps a 16-bar clip under 1 MB of base64


def resample(mono: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """Linear-interpolation resampling (enough for a preview clip; the WAV files keep full rate)."""
    if rate == new_rate or mono.size == 0:
        return mono
    n = int(round(mono.size * new_rate / rate))
    return np.interp(np.arange(n) * (rate / new_rate), np.arange(mono.size), mono)


def wav_data_uri(path: str | Path, rate: int = PAGE_RATE) -> str:
    """A WAV file as a ``data:audio/wav;base64,...`` URI, mono at ``rate`` Hz."""
    import base64
    import io

    frames, src_rate = read_wav(path)
    mono = resample(frames.mean(axis=1), src_rate, rate)
    pcm = np.clip(np.round(mono * 32767), -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def page_clips(spec: dict, tables_dir: str | Path, setting: str = "test_16") -> list[dict]:
    """The clips of the listening page: per metric table, its best row by CS in ``setting``
    (first seed, first sample), with that sample's target.

    Each clip: ``table``, ``pe``, ``context``, ``seed``, ``cs`` and ``pred`` / ``target`` (WAV
    paths, or None when the run wrote none: audio off, or a failed run).
    """
    import csv

    bars = setting.rsplit("_", 1)[-1]
    clips = []
    for name, table in spec["tables"].items():
        path = Path(tables_dir) / f"{name}.csv"
        if table["kind"] != "metrics" or not path.exists() or not table["seeds"]:
            continue
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get(f"cs_{bars}_mean")]
        if not rows:
            continue
        best = max(rows, key=lambda r: float(r[f"cs_{bars}_mean"]))
        seed = table["seeds"][0]
        sample_dir = Path(spec["runs_root"]) / best["pe"] / best["context"] / f"seed{seed}" / "samples"
        preds = sorted(sample_dir.glob(f"{setting}_*_pred.wav"))
        pred = preds[0] if preds else None
        target = pred.with_name(pred.name[: -len("_pred.wav")] + "_target.wav") if pred else None
        clips.append({"table": name, "pe": best["pe"], "context": best["context"], "seed": seed,
                      "cs": float(best[f"cs_{bars}_mean"]), "pred": pred,
                      "target": target if target and target.exists() else None})
    return clips


def listening_page(clips: list[dict], out: str | Path, title: str = "stripes: samples") -> Path:
    """One self-contained HTML page with an ``<audio>`` player per clip (the Snakemake report
    shows HTML results in its viewer, but offers other files, WAV included, only as downloads)."""
    import html

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             "<p>Per table, the row with the highest mean CS at 16 bars: its first seed's first test "
             "sample (prediction: melody, bridge and the predicted piano) and the same window's "
             f"target, resampled to {PAGE_RATE} Hz. The full-rate WAVs and the MIDI files are in each "
             "run's <code>samples/</code> folder and in MLflow.</p>"]
    if not clips:
        parts.append("<p><b>No clips</b>: no metric table has a 16-bar result yet.</p>")
    for c in clips:
        parts.append(f"<h2>{html.escape(c['table'])}: {html.escape(c['pe'])} + {html.escape(c['context'])} "
                     f"(seed {c['seed']}, mean CS {c['cs']:.2f})</h2>")
        for label in ("pred", "target"):
            wav = c[label]
            name = "prediction" if label == "pred" else "target"
            if wav is None:
                parts.append(f"<p>{name}: <b>no audio</b> (audio was off for this run, or the run failed: "
                             "see results/tables/failures.csv)</p>")
            else:
                parts.append(f"<p>{name} <small>({html.escape(Path(wav).name)})</small><br>"
                             f"<audio controls preload='none' src='{wav_data_uri(wav)}'></audio></p>")
    parts.append("</body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(parts))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["page"]:
        ap = argparse.ArgumentParser(prog="python -m stripes.audio page",
                                     description="Write the listening page of a built study.")
        ap.add_argument("--spec", required=True, help="results/tables/spec.json")
        ap.add_argument("--out", required=True, help="the HTML page to write")
        args = ap.parse_args(argv[1:])
        import json

        spec = json.loads(Path(args.spec).read_text())
        clips = page_clips(spec, Path(args.spec).parent)
        print(f"wrote {listening_page(clips, args.out)} ({len(clips)} tables)")
        return 0
    ap = argparse.ArgumentParser(prog="python -m stripes.audio", description="Render MIDI files to WAV "
                                 "(`python -m stripes.audio page --help`: the study's listening page).")
    ap.add_argument("midi", nargs="+", help="MIDI files; each WAV is written next to its MIDI file")
    ap.add_argument("--renderer", choices=("auto", *RENDERERS), default=None)
    args = ap.parse_args(argv)
    for m in args.midi:
        wav = Path(m).with_suffix(".wav")
        print(f"{wav}\t{render(m, wav, args.renderer)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
