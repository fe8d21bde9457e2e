"""Annotation parsers, key/tonic lookup and the melody-based alignment (paper-spec §1.1, §1.3, §2.1).

Chords are (root, mask): root 0..11 (C=0) or -1 for no-chord, mask a 12-bit chroma
(bit k = pitch class k). The no-chord is ``NO_CHORD = (-1, 0)``. All streams are per tick at
16 ticks per quarter: a chord line lasting d beats covers 16*d ticks, a melody.txt line lasting
d sixteenths covers 4*d ticks, a section letter with count n covers 64*n ticks (4/4 assumed).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from stripes.data.midi import SongError

NO_CHORD = (-1, 0)
PHRASE_PAD = 23  # section label 'x' pads the phrase stream (S24 preprocessing)
PITCH_CLASS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}

# Harte-style qualities found in POP909 chord_midi.txt, as intervals from the root.
QUALITIES = {
    "maj": (0, 4, 7), "min": (0, 3, 7), "sus2": (0, 2, 7), "sus4": (0, 5, 7),
    "dim": (0, 3, 6), "aug": (0, 4, 8), "maj7": (0, 4, 7, 11), "min7": (0, 3, 7, 10),
    "7": (0, 4, 7, 10), "sus4(b7)": (0, 5, 7, 10), "maj6": (0, 4, 7, 9), "min6": (0, 3, 7, 9),
    "dim7": (0, 3, 6, 9), "hdim7": (0, 3, 6, 10), "minmaj7": (0, 3, 7, 11),
}


def pitch_class(name: str) -> int:
    """'C#' -> 1, 'Gb' -> 6, 'B' -> 11."""
    if not name or name[0] not in PITCH_CLASS:
        raise ValueError(f"bad note name {name!r}")
    return (PITCH_CLASS[name[0]] + name[1:].count("#") - name[1:].count("b")) % 12


def mask_of(pcs) -> int:
    return int(sum(1 << (p % 12) for p in set(pcs)))


def _read(path: Path) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        raise SongError(f"missing annotation {Path(path).name}: {e.strerror}") from None


def parse_finalized_chord(path: Path) -> list[tuple[tuple[int, int], int]]:
    """Dai ``finalized_chord.txt`` -> [((root, mask), duration_beats)]."""
    out = []
    for i, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            dur = int(line.split()[-1])
            if line.startswith("N"):
                # no-chord lines carry odd tone/root fields (e.g. "N [10] 18 2"): only the
                # duration is meaningful
                out.append((NO_CHORD, dur))
                continue
            # [INF] song 803 has lines like "Ab:maj [0, 3, 8] 8 4 2": an extra trailing number,
            # ignored (root and duration are the usual 4th and 5th fields)
            m = re.match(r"\S+\s*\[([\d,\s]*)\]\s*(\d+)\s+(\d+)(\s+\d+)*\s*$", line)
            tones = [int(t) for t in m.group(1).replace(",", " ").split()]
            root = int(m.group(2))
            if not 0 <= root < 12 or any(not 0 <= t < 12 for t in tones):
                raise ValueError
            out.append(((root, mask_of(tones)), int(m.group(3))))
        except (ValueError, AttributeError, IndexError):
            raise SongError(f"malformed {Path(path).name} line {i}: {line.strip()!r}") from None
    if not out:
        raise SongError(f"empty {Path(path).name}")
    return out


def parse_melody(path: Path) -> np.ndarray:
    """Dai ``melody.txt`` -> pitch per tick (int16, 0 = rest), 4 ticks per sixteenth."""
    pitches, durs = [], []
    for i, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            p, d = (int(v) for v in line.split())
        except ValueError:
            raise SongError(f"malformed {Path(path).name} line {i}: {line.strip()!r}") from None
        pitches.append(p)
        durs.append(d)
    if not pitches:
        raise SongError(f"empty {Path(path).name}")
    return np.repeat(np.array(pitches, dtype=np.int16), 4 * np.array(durs))


def parse_phrases(path: Path) -> np.ndarray:
    """``human_label1.txt`` first line -> section label per tick (a-z 0..25, A-Z 26..51)."""
    text = _read(path).splitlines()
    first = text[0].strip() if text else ""
    runs = re.findall(r"([a-zA-Z])(\d+)", first)
    if not runs or "".join(a + b for a, b in runs) != first:
        raise SongError(f"malformed {Path(path).name}: {first!r}")
    labels = [ord(c) - 97 if c.islower() else ord(c) - 65 + 26 for c, _ in runs]
    return np.repeat(np.array(labels, dtype=np.int16), [64 * int(n) for _, n in runs])


def parse_chord_midi(path: Path) -> list[tuple[float, float, tuple[int, int]]]:
    """POP909 ``chord_midi.txt`` (start_sec, end_sec, Harte label) -> [(start, end, chord)]."""
    rows = []
    for i, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            start, end, label = line.split()
            rows.append((float(start), float(end), parse_chord_name(label)))
        except ValueError as e:
            raise SongError(f"malformed {Path(path).name} line {i}: {line.strip()!r} ({e})") from None
    if not rows:
        raise SongError(f"empty {Path(path).name}")
    return rows


def chord_list(path: Path, source: str) -> list[tuple[int, int]]:
    """Distinct chords of a song in line order, then the no-chord (needed for padding)."""
    seq = [c for c, _ in parse_finalized_chord(path)] if source == "dai" else \
        [c for _, _, c in parse_chord_midi(path)]
    out = list(dict.fromkeys(seq))
    if NO_CHORD not in out:
        out.append(NO_CHORD)
    return out


def parse_chord_name(label: str) -> tuple[int, int]:
    """Harte label such as 'Bb:min7/b7' or 'N' -> (root, mask); the bass is a chord tone already."""
    if label == "N":
        return NO_CHORD
    root_name, _, rest = label.partition(":")
    quality = rest.split("/")[0] or "maj"
    if quality not in QUALITIES:
        raise ValueError(f"unknown chord quality {quality!r} in {label!r}")
    root = pitch_class(root_name)
    return root, mask_of(root + i for i in QUALITIES[quality])


def song_tonic(key_audio: Path, analyzed_key: Path) -> tuple[int, str]:
    """Tonic pitch class per A4: longest key_audio.txt segment, else analyzed_key.txt's first key."""
    best, source = None, ""
    try:
        rows = [ln.split() for ln in Path(key_audio).read_text().splitlines() if ln.strip()]
        segs = [(float(r[1]) - float(r[0]), r[2]) for r in rows if len(r) >= 3]
        if segs:
            best, source = max(segs, key=lambda s: s[0])[1], "key_audio.txt"
    except (OSError, ValueError):
        best = None
    if best is None:
        try:
            m = re.search(r"[A-G][#b]?:(maj|min)", Path(analyzed_key).read_text())
        except OSError:
            m = None
        if m is None:
            raise SongError("no key: key_audio.txt and analyzed_key.txt missing or unparsable")
        best, source = m.group(0), "analyzed_key.txt"
    return pitch_class(best.split(":")[0]), f"{best} ({source})"


def align_offset(annotation: np.ndarray, midi_melody: np.ndarray) -> tuple[int, float]:
    """Offset s (ticks) maximising exact pitch agreement of ``annotation[j]`` with
    ``midi_melody[j + s]`` on the annotation's non-rest ticks (paper-spec §1.3 fallback).

    Returns (s, agreement) with agreement = matches / non-rest annotation ticks. One FFT
    cross-correlation per pitch, batched.
    """
    a, m = np.asarray(annotation), np.asarray(midi_melody)
    pitches = np.intersect1d(np.unique(a[a > 0]), np.unique(m[m > 0]))
    n_notes = int((a > 0).sum())
    if n_notes == 0 or len(pitches) == 0:
        return 0, 0.0
    n = 1 << int(np.ceil(np.log2(len(a) + len(m))))
    A = (a[None, :] == pitches[:, None]).astype(np.float32)
    B = (m[None, :] == pitches[:, None]).astype(np.float32)
    corr = np.fft.irfft(np.conj(np.fft.rfft(A, n)) * np.fft.rfft(B, n), n).sum(axis=0)
    # corr[s] for s >= 0, corr[n + s] for s < 0; restrict to shifts with some overlap
    shifts = np.concatenate([np.arange(0, len(m)), np.arange(-(len(a) - 1), 0)])
    values = np.concatenate([corr[: len(m)], corr[n - (len(a) - 1):]])
    k = int(np.argmax(np.rint(values)))  # rint: FFT round-off must not break ties randomly
    return int(shifts[k]), float(np.rint(values[k]) / n_notes)


def fit(stream: np.ndarray, length: int, shift: int, pad: int) -> np.ndarray:
    """Place annotation ``stream`` at frame ``shift`` (>= 0) and pad/truncate to ``length``."""
    out = np.full(length, pad, dtype=stream.dtype)
    body = stream[: max(0, length - shift)]
    out[shift: shift + len(body)] = body
    return out
