"""Shared fixtures and markers.

Data: most tests need *some* POP909-shaped data, not the real songs. ``synthetic_pop909`` writes a
tiny POP909 tree (MIDI + Dai et al. annotations) and ``prepared_data`` runs the real data stage on
it, once per session, so training, evaluation and resume tests run on a clean clone without the
dataset. Tests that need the real copy (../shared/data or $STRIPES_POP909 /
$STRIPES_POP909_STRUCTURE) use the ``pop909_dir`` / ``structure_dir`` fixtures or the ``real_data``
marker: both skip with the path that was looked at when the copy is absent.

Environment: the user's $STRIPES_POP909* variables override every data setting
(stripes.data.fetch.resolve), so a test that points prepare() at synthetic songs would silently
read the real ones. They are removed for every test except the real-data ones.

Markers: ``slow`` (not in `make test-fast`), ``gpu`` (skipped without CUDA), ``real_data``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DATA_ENV_VARS = ("STRIPES_POP909", "STRIPES_POP909_STRUCTURE")

# read at import, before any test's monkeypatch can change the environment
REAL_POP909 = Path(os.environ.get("STRIPES_POP909") or SHARED / "pop909" / "POP909")
REAL_STRUCTURE = Path(os.environ.get("STRIPES_POP909_STRUCTURE") or SHARED / "pop909-structure" / "POP909")
REAL_DATA_FIXTURES = {"pop909_dir", "structure_dir"}


def real_data_missing() -> str | None:
    """Why the real-data tests skip, or None when the copy is there."""
    if not (REAL_POP909 / "001" / "001.mid").exists():
        return f"POP909 copy not found at {REAL_POP909} (set STRIPES_POP909)"
    if not (REAL_STRUCTURE / "001" / "finalized_chord.txt").exists():
        return (f"POP909 structure annotations not found at {REAL_STRUCTURE} "
                "(set STRIPES_POP909_STRUCTURE)")
    return None


@pytest.fixture(scope="session")
def pop909_dir() -> Path:
    if not (REAL_POP909 / "001" / "001.mid").exists():
        pytest.skip(f"POP909 copy not found at {REAL_POP909} (set STRIPES_POP909)")
    return REAL_POP909


@pytest.fixture(scope="session")
def structure_dir() -> Path:
    if not (REAL_STRUCTURE / "001" / "finalized_chord.txt").exists():
        pytest.skip(f"POP909 structure annotations not found at {REAL_STRUCTURE} (set STRIPES_POP909_STRUCTURE)")
    return REAL_STRUCTURE


def _needs_real_data(item) -> bool:
    return item.get_closest_marker("real_data") is not None or bool(REAL_DATA_FIXTURES & set(item.fixturenames))


@pytest.fixture(autouse=True)
def _fresh_audio_renderings():
    # stripes.audio keeps the last renderings of its process: a test that replaces a renderer
    # (monkeypatch) must not get the rendering of an earlier test with the same MIDI file
    from stripes import audio

    audio._RENDERED.clear()


@pytest.fixture(autouse=True)
def _isolate_data_env(request, monkeypatch):
    if not _needs_real_data(request.node):
        for var in DATA_ENV_VARS:
            monkeypatch.delenv(var, raising=False)


@pytest.hookimpl(tryfirst=True)  # before -m deselects: the marker is added here
def pytest_collection_modifyitems(config, items):
    import torch

    no_cuda = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    missing = real_data_missing()
    for item in items:
        if _needs_real_data(item):
            # so that `-m "not real_data"` also deselects the tests that only take the fixtures
            item.add_marker(pytest.mark.real_data)
            if missing:
                item.add_marker(pytest.mark.skip(reason=missing))
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)


# ----------------------------------------------------------------------------- synthetic POP909

TPB = 480  # MIDI ticks per quarter (POP909's)
MELODY = np.random.default_rng(7).integers(60, 72, size=80).tolist()  # one pitch per quarter
# Dai finalized_chord.txt lines: (name, chord tones, root, beats)
E_MIN, D_MAJ, A_MAJ, C_MAJ = ("E:min", [4, 7, 11], 4), ("D:maj", [2, 6, 9], 2), ("A:maj", [1, 4, 9], 9), ("C:maj", [0, 4, 7], 0)
SIMPLE_CHORDS = [(*E_MIN, 2), (*D_MAJ, 2)] * 20 + [(*A_MAJ, 1)]
SIMPLE_PIANO = [(40, 0, 4), (43, 16, 20)]  # (pitch, start quarter, end quarter)


def write_song(pop: Path, struct: Path, sid: str, *, melody=MELODY, piano=SIMPLE_PIANO, chords=SIMPLE_CHORDS,
               phrases: str = "i1A8B8b4o3", melody_txt: str | None = None, lead_quarters: int = 2) -> None:
    """One POP909 song folder + its Dai et al. annotation folder.

    MIDI: MELODY one note per quarter from quarter ``lead_quarters`` (pitch 0 = rest), BRIDGE one
    note at tick 0, PIANO ``piano`` (None: no PIANO track). The annotations start one quarter
    after the first note, so prepare() must find a shift of +16 ticks; ``melody_txt`` replaces
    the melody annotation (malformed-input tests).
    """
    tracks = {"MELODY": [(p, (lead_quarters + i) * TPB, (lead_quarters + i + 1) * TPB)
                         for i, p in enumerate(melody) if p],
              "BRIDGE": [(50, 0, 2 * TPB)]}
    if piano is not None:
        tracks["PIANO"] = [(p, s * TPB, e * TPB) for p, s, e in piano]
    _write_midi(pop / sid / f"{sid}.mid", tracks)
    (pop / sid / "key_audio.txt").write_text("0.0\t5.0\tC:maj\n5.0\t100.0\tD:maj\n")
    d = struct / sid
    d.mkdir(parents=True)
    lead = lead_quarters - 1
    (d / "melody.txt").write_text(melody_txt or (f"0 {4 * lead}\n" + "".join(f"{p} 4\n" for p in melody)))
    (d / "finalized_chord.txt").write_text("".join(f"{n} {t} {r} {b} \n" for n, t, r, b in chords))
    (d / "human_label1.txt").write_text(phrases + "\n")
    (d / "analyzed_key.txt").write_text("D:maj\n")
    (d / "tempo.txt").write_text("90")


def _write_midi(path: Path, tracks: dict) -> None:
    import miditoolkit

    midi = miditoolkit.MidiFile(ticks_per_beat=TPB)
    for name, notes in tracks.items():
        inst = miditoolkit.Instrument(program=0, name=name)
        inst.notes = [miditoolkit.Note(velocity=80, pitch=p, start=s, end=e) for p, s, e in notes]
        midi.instruments.append(inst)
    path.parent.mkdir(parents=True)
    midi.dump(str(path))


def musical_song(n_quarters: int, seed: int) -> dict:
    """write_song() arguments for a song with a chord progression, a melody on its scale with
    rests, and a piano part of bass + chord tones on every beat, so that the model has something
    to learn and every metric has notes on both sides."""
    rng = np.random.default_rng(seed)
    lead = 2
    progression = [E_MIN, D_MAJ, A_MAJ, C_MAJ]
    chords, piano = [], []
    q = lead - 1  # the annotations start at quarter 1
    chords.append(("N", [], 0, 1))
    i = 0
    while q < lead + n_quarters:
        name, tones, root = progression[i % len(progression)]
        beats = min(2, lead + n_quarters - q)
        chords.append((name, tones, root, beats))
        for b in range(q, q + beats):
            piano.append((36 + root, b, b + 1))
            piano += [(48 + t, b, b + 1) for t in tones if rng.random() < 0.8]
        q += beats
        i += 1
    melody = [0 if rng.random() < 0.15 else int(p) for p in rng.choice([60, 62, 64, 65, 67, 69, 71, 72], n_quarters)]
    bars = -(-(lead + n_quarters) // 4)
    phrases = "i1" + "".join(f"{'AB'[k % 2]}{min(8, bars - 1 - 8 * k)}" for k in range(-(-(bars - 1) // 8)))
    return {"melody": melody, "piano": piano, "chords": chords, "phrases": phrases}


# Song lengths (quarters of melody) chosen so that the prepared windows match the first 4 real
# songs under split_fractions [0.5, 0.25, 0.25], split_seed 5 (train 002+004, val 003, test 001):
# 16-bar windows train 7 / val 5 / test 4, 64-bar windows val 1 / test 1.
SYNTHETIC_SONGS = {"001": 270, "002": 236, "003": 308, "004": 225}
SYNTHETIC_SETTINGS = {"download": False, "max_songs": 4, "split_fractions": [0.5, 0.25, 0.25], "split_seed": 5}


@pytest.fixture(scope="session")
def synthetic_pop909(tmp_path_factory) -> tuple[Path, Path]:
    """(POP909 folder, structure folder) of 4 synthetic songs; read-only for the tests."""
    base = tmp_path_factory.mktemp("synthetic_pop909")
    pop, struct = base / "pop" / "POP909", base / "struct" / "POP909"
    for n, (sid, quarters) in enumerate(SYNTHETIC_SONGS.items()):
        write_song(pop, struct, sid, **musical_song(quarters, seed=n))
    return pop, struct


@pytest.fixture(scope="session")
def prepared_data(synthetic_pop909, tmp_path_factory) -> Path:
    """The data stage's output (songs/, split.json, ...) for the synthetic songs; read-only."""
    from stripes.data.prepare import prepare

    pop, struct = synthetic_pop909
    out = tmp_path_factory.mktemp("prepared")
    env = {v: os.environ.pop(v) for v in DATA_ENV_VARS if v in os.environ}  # session scope: no monkeypatch
    try:
        prepare({**SYNTHETIC_SETTINGS, "pop909_dir": str(pop), "structure_dir": str(struct),
                 "out_dir": str(out / "data"), "cache_dir": str(out / "cache")},
                jobs=1, verify_files=False, log=lambda *a, **k: None)
    finally:
        os.environ.update(env)
    return out / "data"
