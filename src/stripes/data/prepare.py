"""Prepare POP909: per-song pianorolls and label streams, global chord table, split, report.

Outputs under ``out_dir`` (default results/data):

* ``songs/NNN.npz`` (per-song cache) with
  ``roll`` uint8 (T, 48): the bool (T, 384) pianoroll bit-packed along the row axis
  (rows: MELODY 0-127, BRIDGE 128-255, PIANO 256-383; frames at 16 ticks per quarter);
  ``chord`` int16 (T,): local chord index into the song's chord list;
  ``melody`` uint8 (T,): Dai melody pitch (0 rest); ``phrase`` uint8 (T,): section label.
  ``songs/index.json`` records, per song, the cache key (source checksums from the manifest +
  the per-song settings + CODE_VERSION) and the song's metadata, so a rerun skips valid songs.
* ``chords.json``: global chord table [[root, mask], ...] (first appearance over the songs in
  id order, the song's chord lines in order, no-chord appended after each song's lines, since
  padding needs it: this gives the authors' 395 ids with no-chord at 8, paper-spec A2).
* ``songs.json``: per kept song n_frames, local->global chord ids, local->KEY token ids, tonic.
* ``key_vocab.json``: KEY tokens (0 = "N" no-chord, 1 = "<unk>", then first appearance over
  the training songs).
* ``split.json``: {"seed", "fractions", "train", "val", "test"} (song ids).
* ``settings.json``: the resolved data settings; ``report.json`` / ``report.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from stripes.contexts import transpose_chord
from stripes.data import annotations as ann
from stripes.data.fetch import SOURCES, DataError, load_manifest, resolve
from stripes.data.midi import SongError, load_pianoroll, melody_per_tick, seconds_to_ticks
from stripes.data.settings import AUTHORS_DROPPED, load_settings
from stripes.data.store import window_starts
from stripes.fileio import atomic_write_text

CODE_VERSION = "2"  # bump when the per-song derivation changes: invalidates the cache
PER_SONG_KEYS = ("ticks_per_quarter", "chord_source")  # settings the per-song cache depends on


# ------------------------------------------------------------------------------ one song


def song_files(sid: str, chord_source: str) -> dict[str, tuple[str, str]]:
    """{role: (dataset, path relative to its POP909 folder)} of the files a song needs."""
    files = {
        "midi": ("pop909", f"{sid}/{sid}.mid"),
        "key_audio": ("pop909", f"{sid}/key_audio.txt"),
        "melody": ("structure", f"{sid}/melody.txt"),
        "phrase": ("structure", f"{sid}/human_label1.txt"),
        "analyzed_key": ("structure", f"{sid}/analyzed_key.txt"),
    }
    if chord_source == "dai":
        files["chords"] = ("structure", f"{sid}/finalized_chord.txt")
    else:
        files["chords"] = ("pop909", f"{sid}/chord_midi.txt")
    return files


def cache_key(sid: str, settings: dict, manifests: dict) -> str:
    files = song_files(sid, settings["chord_source"])
    blob = {
        "code": CODE_VERSION,
        "settings": {k: settings[k] for k in PER_SONG_KEYS},
        "files": {role: manifests[ds].get(rel, "?") for role, (ds, rel) in files.items()},
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:20]


def _chords_from_midi_txt(path: Path, roll) -> tuple[list, np.ndarray]:
    """POP909 chord_midi.txt (seconds, already in MIDI time) -> (chord list, local id per frame)."""
    rows = ann.parse_chord_midi(path)
    chords = ann.chord_list(path, "pop909")
    stream = np.full(len(roll.roll), chords.index(ann.NO_CHORD), dtype=np.int64)
    bounds = seconds_to_ticks(roll, np.array([[r[0], r[1]] for r in rows]).ravel()).reshape(-1, 2)
    for (a, b), (_, _, chord) in zip(bounds, rows):
        stream[max(a, 0): max(b, 0)] = chords.index(chord)
    return chords, stream


def process_song(sid: str, roots: dict, settings: dict, out_dir: Path, key: str) -> dict:
    """Prepare one song; returns its metadata, or {"id", "error"} when the song is unusable."""
    try:
        return _process_song(sid, roots, settings, out_dir, key)
    except SongError as e:
        return {"id": sid, "key": key, "error": str(e)}


def _process_song(sid, roots, settings, out_dir, key) -> dict:
    tpq = settings["ticks_per_quarter"]
    files = {role: Path(roots[ds]) / rel for role, (ds, rel) in
             song_files(sid, settings["chord_source"]).items()}
    pr = load_pianoroll(files["midi"], tpq)
    roll = pr.roll
    mel_ann = ann.parse_melody(files["melody"])
    phrase = ann.parse_phrases(files["phrase"])
    tonic, key_name = ann.song_tonic(files["key_audio"], files["analyzed_key"])
    shift, agreement = ann.align_offset(mel_ann, melody_per_tick(roll))
    # shift < 0: the annotations start before the first note -> prepend silent frames (§1.3.4)
    prepend = max(0, -shift)
    shift = max(0, shift)
    if prepend:
        roll = np.concatenate([np.zeros((prepend, roll.shape[1]), bool), roll])
    T = len(roll)

    if settings["chord_source"] == "dai":
        lines = ann.parse_finalized_chord(files["chords"])
        chords = ann.chord_list(files["chords"], "dai")
        local = np.repeat([chords.index(c) for c, _ in lines], [16 * d for _, d in lines])
        chord_stream = ann.fit(local, T, shift, chords.index(ann.NO_CHORD))
    else:  # POP909 chord_midi.txt: MIDI time already, only the prepended frames move it
        chords, stream = _chords_from_midi_txt(files["chords"], pr)
        chord_stream = ann.fit(stream, T, prepend, chords.index(ann.NO_CHORD))
    melody = ann.fit(mel_ann, T, shift, 0)
    phrase = ann.fit(phrase, T, shift, ann.PHRASE_PAD)

    _, first = np.unique(chord_stream, return_index=True)
    frame_order = [int(chord_stream[i]) for i in sorted(first)]
    path = out_dir / "songs" / f"{sid}.npz"
    tmp = path.with_name(f"{sid}.tmp.npz")
    np.savez(tmp, roll=np.packbits(roll, axis=1), chord=chord_stream.astype(np.int16),
             melody=melody.astype(np.uint8), phrase=phrase.astype(np.uint8))
    tmp.replace(path)
    return {
        "id": sid, "key": key, "n_frames": T, "shift_ticks": shift - prepend,
        "agreement": round(agreement, 4), "tonic": tonic, "key_name": key_name,
        "chords": [list(c) for c in chords], "frame_order": frame_order,
    }


def _worker(args):
    return process_song(*args)


# ------------------------------------------------------------------------------ song selection


def select_songs(all_ids: list[str], settings: dict, pop_root: Path) -> tuple[list, dict]:
    """Apply the song filter; returns (kept ids, {dropped id: reason})."""
    dropped = {}
    if settings["song_filter"] == "authors":
        for sid in AUTHORS_DROPPED:
            dropped[sid] = "not in the authors' 866 songs (non-4/4 or too short; paper-spec §1.2)"
    elif settings["song_filter"] == "all":
        pass  # every song (benchmarks; not the paper's selection)
    elif settings["song_filter"] == "index_4_4":
        import pandas as pd

        index = pop_root / "index.xlsx"
        try:
            df = pd.read_excel(index)
        except Exception as e:
            raise DataError(f"cannot read {index} for song_filter=index_4_4: {e}") from e
        listed = set()
        for row in df.itertuples():
            sid = f"{int(row.song_id):03d}"
            listed.add(sid)
            beats, quavers = int(row.num_beats_per_measure), int(row.num_quavers_per_beat)
            if (beats, quavers) != (2, 2):  # [INF] (2, 2) is the simple-4/4 code of index.xlsx
                dropped[sid] = (f"index.xlsx: num_beats_per_measure={beats}, "
                                f"num_quavers_per_beat={quavers} (not simple 4/4)")
        for sid in all_ids:
            if sid not in listed:
                dropped[sid] = "not listed in index.xlsx"
    else:
        raise ValueError(f"data.song_filter: unknown value {settings['song_filter']!r}")
    kept = [s for s in all_ids if s not in dropped]
    if settings.get("max_songs"):
        for sid in kept[settings["max_songs"]:]:
            dropped[sid] = f"beyond data.max_songs={settings['max_songs']}"
        kept = kept[: settings["max_songs"]]
    return kept, dropped


def global_chord_table(all_ids, roots, source: str) -> dict[tuple, int]:
    """Global chord ids (A2): first appearance over ALL songs 001->909 (whatever the filter, so
    ids never depend on it), lines in order, no-chord after each song's lines. Over the 909
    songs this reproduces the authors' 395 ids with no-chord at 8."""
    table: dict[tuple, int] = {}
    for sid in all_ids:
        ds, rel = song_files(sid, source)["chords"]
        try:
            chords = ann.chord_list(Path(roots[ds]) / rel, source)
        except SongError:
            continue  # reported when the song itself is processed
        for c in chords:
            table.setdefault(tuple(c), len(table))
    return table


def make_split(ids: list[str], seed: int, fractions) -> dict:
    """Seeded 80/10/10 permutation split by song (A3); lists are sorted for readability."""
    ids = sorted(ids)
    perm = np.random.default_rng(seed).permutation(len(ids))
    n_train = int(round(fractions[0] * len(ids)))
    n_val = int(round(fractions[1] * len(ids)))
    pick = lambda idx: sorted(ids[i] for i in idx)  # noqa: E731
    return {"seed": seed, "fractions": list(fractions), "train": pick(perm[:n_train]),
            "val": pick(perm[n_train:n_train + n_val]), "test": pick(perm[n_train + n_val:])}


# ------------------------------------------------------------------------------ the whole stage


def prepare(settings: dict | None = None, jobs: int = 1, verify_files: bool = True,
            log=print) -> dict:
    """Run the data stage; returns the report dict (also written to ``out_dir``)."""
    t0 = time.perf_counter()
    s = load_settings(settings)
    out = Path(s["out_dir"])
    (out / "songs").mkdir(parents=True, exist_ok=True)
    roots = {name: resolve(name, s, verify_files=verify_files, threads=max(2, jobs))
             for name in SOURCES}
    manifests = {name: load_manifest(src) for name, src in SOURCES.items()}
    all_ids = sorted({rel.split("/")[0] for rel in manifests["pop909"] if rel.endswith(".mid")})
    kept, dropped = select_songs(all_ids, s, roots["pop909"])

    index_path = out / "songs" / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    metas, todo = {}, []
    for sid in kept:
        key = cache_key(sid, s, manifests)
        old = index.get(sid)
        if old and old.get("key") == key and ("error" in old or (out / "songs" / f"{sid}.npz").exists()):
            metas[sid] = old
        else:
            todo.append((sid, {k: str(v) for k, v in roots.items()}, s, out, key))
    log(f"[prepare] {len(kept)} songs selected, {len(metas)} cached, {len(todo)} to process "
        f"with {jobs} job(s)")
    if jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for meta in pool.map(_worker, todo, chunksize=4):
                metas[meta["id"]] = meta
    else:
        for args in todo:
            metas[args[0]] = _worker(args)
    index.update(metas)
    atomic_write_text(index_path, json.dumps(index))

    songs = []
    for sid in kept:
        meta = metas[sid]
        if "error" in meta:
            dropped[sid] = meta["error"]
        elif s["exclude_low_agreement"] and meta["agreement"] < s["min_agreement"]:
            dropped[sid] = f"alignment agreement {meta['agreement']:.3f} < {s['min_agreement']}"
        else:
            songs.append(sid)

    table = global_chord_table(all_ids, roots, s["chord_source"])
    split = make_split(songs, s["split_seed"], s["split_fractions"])
    # KEY vocabulary over the training songs, in frame order (A5)
    vocab: dict[tuple, int] = {(-1, 0): 0, ("unk",): 1}
    key_tok = {}
    for sid in songs:
        key_tok[sid] = [transpose_chord(c[0], c[1], metas[sid]["tonic"]) for c in metas[sid]["chords"]]
    for sid in split["train"]:
        for local in metas[sid]["frame_order"]:
            vocab.setdefault(key_tok[sid][local], len(vocab))
    song_table = {
        sid: {"n_frames": metas[sid]["n_frames"], "tonic": metas[sid]["tonic"],
              "chord_ids": [table[tuple(c)] for c in metas[sid]["chords"]],
              "key_ids": [vocab.get(t, 1) for t in key_tok[sid]]}
        for sid in songs
    }

    bars16, bars64 = s["window_bars"], s["long_window_bars"]
    count = lambda ids, b, o: sum(len(window_starts(song_table[i]["n_frames"], b, o)) for i in ids)  # noqa: E731
    windows = {
        f"train_{bars16}": count(split["train"], bars16, s["window_overlap"]),
        f"val_{bars16}": count(split["val"], bars16, s["window_overlap"]),
        f"test_{bars16}": count(split["test"], bars16, s["window_overlap"]),
        f"val_{bars64}": count(split["val"], bars64, s["long_window_overlap"]),
        f"test_{bars64}": count(split["test"], bars64, s["long_window_overlap"]),
    }
    agreements = {sid: metas[sid]["agreement"] for sid in kept if "error" not in metas[sid]}
    vals = np.array(list(agreements.values())) if agreements else np.zeros(1)
    low = sorted(sid for sid, a in agreements.items() if a < s["min_agreement"])
    report = {
        "songs_found": len(all_ids),
        "songs_kept": len(songs),
        "songs_dropped": len(dropped),
        "dropped": dict(sorted(dropped.items())),
        "song_filter": s["song_filter"],
        "chord_source": s["chord_source"] + (
            " (Dai finalized_chord.txt, aligned by the melody offset)" if s["chord_source"] == "dai"
            else " (POP909 chord_midi.txt, already in MIDI time; melody/phrase still aligned Dai)"),
        "windows": windows,
        "split_sizes": {k: len(split[k]) for k in ("train", "val", "test")},
        "n_chord_ids": len(table),
        "no_chord_id": table.get((-1, 0)),
        "n_key_tokens": len(vocab),
        "alignment": {
            "threshold": s["min_agreement"],
            "excluded": bool(s["exclude_low_agreement"]),
            "median": float(np.median(vals)), "mean": float(np.mean(vals)),
            "min": float(np.min(vals)), "n_below_threshold": len(low), "below_threshold": low,
            "per_song": {sid: {"agreement": a, "shift_ticks": metas[sid]["shift_ticks"]}
                         for sid, a in agreements.items()},
        },
        "processed_songs": len(todo),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    _write_json(out / "chords.json", [list(c) for c in table])
    _write_json(out / "songs.json", song_table)
    _write_json(out / "key_vocab.json", [list(t) for t in vocab])
    _write_json(out / "split.json", split)
    _write_json(out / "settings.json", s)
    _write_json(out / "report.json", report)
    (out / "report.md").write_text(report_markdown(report))
    log(f"[prepare] kept {len(songs)} songs, windows {windows}, {report['seconds']} s")
    return report


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def report_markdown(r: dict) -> str:
    a = r["alignment"]
    lines = [
        "# Data report", "",
        f"- songs found: {r['songs_found']}; kept: {r['songs_kept']}; dropped: {r['songs_dropped']} "
        f"(filter `{r['song_filter']}`)",
        f"- chord source: {r['chord_source']}",
        f"- split (songs): {r['split_sizes']}",
        f"- global chord ids: {r['n_chord_ids']} (no-chord id {r['no_chord_id']}); "
        f"KEY tokens: {r['n_key_tokens']}",
        "", "## Windows", "", "| set | windows |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in r["windows"].items()],
        "", "## Annotation alignment (melody agreement per song)", "",
        f"median {a['median']:.3f}, mean {a['mean']:.3f}, min {a['min']:.3f}; "
        f"{a['n_below_threshold']} songs below {a['threshold']} "
        f"({'excluded' if a['excluded'] else 'kept'}): {', '.join(a['below_threshold']) or '-'}",
        "", "## Dropped songs", "", "| song | reason |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in r["dropped"].items()], "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stripes prepare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default=None,
                    help="data settings: a JSON string or a YAML/JSON file (config data section)")
    ap.add_argument("--jobs", "--threads", type=int, default=os.cpu_count() or 1, dest="jobs",
                    help="worker processes")
    ap.add_argument("--no-verify", action="store_true", help="skip the checksum verification")
    args = ap.parse_args(argv)
    try:
        prepare(load_settings(args.settings), jobs=args.jobs, verify_files=not args.no_verify)
    except DataError as e:
        print(f"stripes prepare: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
