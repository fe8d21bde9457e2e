"""Integration on the real POP909 copy in ../shared (skipped with a reason when absent)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from stripes.data import annotations as ann
from stripes.data.fetch import SOURCES, verify
from stripes.data.prepare import prepare

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def prepared(pop909_dir, structure_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real")
    settings = {"pop909_dir": str(pop909_dir), "structure_dir": str(structure_dir),
                "out_dir": str(tmp / "data"), "cache_dir": str(tmp / "cache"), "max_songs": 8}
    report = prepare(settings, jobs=2, verify_files=False, log=lambda *a: None)
    return settings, report


def test_real_copy_matches_the_committed_checksums(pop909_dir, structure_dir, tmp_path):
    assert verify(pop909_dir, SOURCES["pop909"], cache_dir=tmp_path)["n_files"] == 5455
    assert verify(structure_dir, SOURCES["structure"], cache_dir=tmp_path)["n_files"] == 5455


def test_global_chord_table_matches_the_authors(prepared):
    settings, report = prepared
    assert report["n_chord_ids"] == 395 and report["no_chord_id"] == 8
    chords = [tuple(c) for c in json.load(open(f"{settings['out_dir']}/chords.json"))]
    names = ["B:maj", "C#:maj", "Bb:min", "Eb:min", "F#:maj"]
    assert chords[:5] == [ann.parse_chord_name(n) for n in names]
    # id 5 is Dai's "B:maj7 [3, 6, 9, 11] 11": the table keys on (root, tones), not the name
    assert chords[5] == (11, ann.mask_of([3, 6, 9, 11])) and chords[8] == ann.NO_CHORD


def test_song_001_chords_per_quarter(prepared):
    settings, _ = prepared
    out = settings["out_dir"]
    z = np.load(f"{out}/songs/001.npz")
    ids = np.array(json.load(open(f"{out}/songs.json"))["001"]["chord_ids"])[z["chord"]]
    # paper-spec §8.6: N, B, B, C#, C#, Bbm, Bbm, Ebm, Ebm
    assert ids[::16][:9].tolist() == [8, 0, 0, 1, 1, 2, 2, 3, 3]


def test_report_and_alignment(prepared):
    settings, report = prepared
    assert report["songs_kept"] == 8 and report["songs_found"] == 909
    assert report["dropped"]["034"].startswith("not in the authors' 866")
    per = report["alignment"]["per_song"]
    assert per["001"]["agreement"] > 0.8 and len(per) == 8
    assert sum(report["windows"].values()) > 0


def test_dataset_and_mi_on_real_songs(prepared, tmp_path):
    pytest.importorskip("torch")
    from stripes.data import WindowDataset
    from stripes.mi import main as mi_main

    settings, report = prepared
    ds = WindowDataset(settings["out_dir"], "train", 16, "bin")
    assert len(ds) == report["windows"]["train_16"]
    item = ds[0]
    assert item["x"].shape == (1024, 256) and item["pos"].shape == (1024, 12)
    assert 0 < float(item["y"].sum()) and float(item["pos"].max()) == 1.0
    out = tmp_path / "mi.csv"
    assert mi_main(["--data-dir", settings["out_dir"], "--out", str(out),
                    "--settings", '{"contexts": ["time", "rep", "key", "bin"]}']) == 0
    rows = {r["context"]: r for r in csv.DictReader(open(out))}
    assert set(rows) == {"time", "rep", "key", "bin"}
    assert float(rows["bin"]["mi_nats"]) > float(rows["time"]["mi_nats"])
    assert out.with_suffix(".md").exists()


def test_index_4_4_rule_keeps_857(pop909_dir):
    from stripes.data.prepare import select_songs
    from stripes.data.settings import AUTHORS_DROPPED, load_settings

    ids = [f"{i:03d}" for i in range(1, 910)]
    kept, dropped = select_songs(ids, load_settings({"song_filter": "index_4_4"}), pop909_dir)
    assert len(kept) == 857 and all("simple 4/4" in r for r in dropped.values())
    authors, _ = select_songs(ids, load_settings(), pop909_dir)
    assert len(authors) == 866 and not set(AUTHORS_DROPPED) & set(authors)


def test_mi_train_variant_independent_of_splits(prepared):
    from stripes.mi import compute

    settings, _ = prepared
    all_rows = {r["context"]: r for r in compute(settings["out_dir"], ["time", "bin"], log=lambda *a: None)}
    test_rows = {r["context"]: r for r in compute(settings["out_dir"], ["time", "bin"], splits=["test"],
                                                  log=lambda *a: None)}
    assert test_rows["bin"]["mi_train"] == all_rows["bin"]["mi_train"] > 0
    assert test_rows["bin"]["n_cells"] < all_rows["bin"]["n_cells"]
