"""Annotations, alignment, windows, split and the whole prepare stage on a synthetic POP909."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import MELODY, write_song

from stripes.data import annotations as ann
from stripes.data.midi import SongError
from stripes.data.prepare import make_split, prepare, window_starts


@pytest.fixture(scope="session")
def _synthetic_tree(tmp_path_factory):
    """Six songs: four good ones, 003 without a PIANO track, 004 with a truncated MIDI and a
    malformed melody.txt."""
    base = tmp_path_factory.mktemp("synthetic6")
    pop, struct = base / "pop" / "POP909", base / "struct" / "POP909"
    for sid in ("001", "002", "005", "006"):
        write_song(pop, struct, sid)
    write_song(pop, struct, "003", piano=None)
    write_song(pop, struct, "004", melody_txt="60 x\n")
    (pop / "004" / "004.mid").write_bytes((pop / "004" / "004.mid").read_bytes()[:40])
    return base


@pytest.fixture
def synthetic(_synthetic_tree, tmp_path):
    # a copy per test: some tests edit the songs
    shutil.copytree(_synthetic_tree / "pop", tmp_path / "pop")
    shutil.copytree(_synthetic_tree / "struct", tmp_path / "struct")
    return {"pop909_dir": str(tmp_path / "pop" / "POP909"), "structure_dir": str(tmp_path / "struct" / "POP909"),
            "out_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), "download": False, "max_songs": 6}


def test_parsers(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("B:maj [3, 6, 11] 11 2 \nN [10] 18 2\nAb:maj [0, 3, 8] 8 4 2\n")
    assert ann.parse_finalized_chord(p) == [((11, ann.mask_of([3, 6, 11])), 2), (ann.NO_CHORD, 2),
                                            ((8, ann.mask_of([0, 3, 8])), 4)]
    p.write_text("B:maj [3, 6] eleven 2\n")
    with pytest.raises(SongError, match="malformed c.txt line 1"):
        ann.parse_finalized_chord(p)
    p.write_text("0 2\n61 1\n")
    assert ann.parse_melody(p).tolist() == [0] * 8 + [61] * 4
    p.write_text("i1A2x1\n")
    assert ann.parse_phrases(p).tolist() == [8] * 64 + [26] * 128 + [23] * 64
    p.write_text("i1A2 !\n")
    with pytest.raises(SongError, match="malformed c.txt"):
        ann.parse_phrases(p)
    with pytest.raises(SongError, match="missing annotation nothing.txt"):
        ann.parse_melody(tmp_path / "nothing.txt")
    assert ann.parse_chord_name("Bb:min7/b7") == (10, ann.mask_of([10, 1, 5, 8]))
    assert ann.parse_chord_name("C:sus4(b7)") == (0, ann.mask_of([0, 5, 7, 10]))


def test_song_tonic_longest_segment_then_fallback(tmp_path):
    ka, ak = tmp_path / "key_audio.txt", tmp_path / "analyzed_key.txt"
    ka.write_text("0\t10\tC:maj\n10\t50\tGb:min\n50\t60\tC:maj\n")
    ak.write_text("A:maj\n")
    assert ann.song_tonic(ka, ak)[0] == 6
    ka.unlink()
    assert ann.song_tonic(ka, ak) == (9, "A:maj (analyzed_key.txt)")


@pytest.mark.parametrize("start", [0, 37, 300, -84])
def test_align_offset_recovers_shift(start):
    rng = np.random.default_rng(3)
    midi = np.repeat(rng.integers(55, 80, size=300), 4)
    midi[rng.random(len(midi)) < 0.2] = 0
    if start >= 0:  # annotation[j] == midi[j + start]
        annotation = midi[start: start + 600].copy()
    else:  # the annotation begins -start ticks before the MIDI
        annotation = np.concatenate([np.repeat(rng.integers(55, 80, size=-start // 4), 4), midi[:600]])
    s, agreement = ann.align_offset(annotation, midi)
    assert s == start
    assert agreement == 1.0 if start >= 0 else 0.8 < agreement < 1.0
    noisy = midi[start: start + 600].copy() if start >= 0 else annotation.copy()
    noisy[5::10] = 99  # a pitch the MIDI never has: agreement drops, the offset stays
    s2, a2 = ann.align_offset(noisy, midi)
    assert s2 == start and a2 < agreement


def test_fit_places_and_pads():
    assert ann.fit(np.array([1, 2, 3]), 6, 2, 9).tolist() == [9, 9, 1, 2, 3, 9]
    assert ann.fit(np.array([1, 2, 3]), 3, 1, 9).tolist() == [9, 1, 2]


def test_window_starts_counts():
    # W = 1024: a window needs W+1 frames; hop = 1025 - 128 = 897
    assert list(window_starts(1024, 16, 128)) == []
    assert list(window_starts(1025, 16, 128)) == [0]
    assert list(window_starts(1025 + 897, 16, 128)) == [0, 897]
    assert list(window_starts(1025 + 896, 16, 128)) == [0]
    assert len(window_starts(10_000, 64, 512)) == 2  # hop 3585: starts 0, 3585 (3585+4097 <= 10000)


def test_split_is_seeded_and_by_song():
    ids = [f"{i:03d}" for i in range(1, 101)]
    a, b = make_split(ids, 0, [0.8, 0.1, 0.1]), make_split(list(reversed(ids)), 0, [0.8, 0.1, 0.1])
    assert a == b
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (80, 10, 10)
    assert sorted(a["train"] + a["val"] + a["test"]) == ids
    assert make_split(ids, 1, [0.8, 0.1, 0.1])["test"] != a["test"]


def test_prepare_synthetic_end_to_end(synthetic):
    report = prepare(synthetic, jobs=1, verify_files=False, log=lambda *a: None)
    out = synthetic["out_dir"]
    # bad songs are reported with a reason and skipped, the run goes on
    assert "PIANO" in report["dropped"]["003"]
    assert "unreadable MIDI 004.mid" in report["dropped"]["004"]
    assert report["dropped"]["007"].startswith("beyond data.max_songs")
    assert report["songs_kept"] == 4
    per_song = report["alignment"]["per_song"]
    assert per_song["001"] == {"agreement": 1.0, "shift_ticks": 16}
    z = np.load(f"{out}/songs/001.npz")
    roll = np.unpackbits(z["roll"], axis=1)
    T = 32 + 80 * 16
    assert roll.shape == (T, 384) and len(z["chord"]) == T
    assert roll[32:48, MELODY[0]].all() and roll[0:64, 256 + 40].all() and roll[0:32, 128 + 50].all()
    # annotation streams: 16 padding ticks, then the rest quarter, then the melody
    assert z["melody"][:32].tolist() == [0] * 32 and z["melody"][32] == MELODY[0]
    assert z["phrase"][:16].tolist() == [23] * 16 and z["phrase"][16] == 8  # 'i'
    songs = json.load(open(f"{out}/songs.json"))
    chords = json.load(open(f"{out}/chords.json"))
    glob = np.array(songs["001"]["chord_ids"])[z["chord"]]
    assert [tuple(chords[g]) for g in glob[[0, 16, 48, 80]]] == [
        ann.NO_CHORD, ann.parse_chord_name("E:min"), ann.parse_chord_name("D:maj"), ann.parse_chord_name("E:min")]
    # KEY: tonic D (longest key_audio segment) -> E:min becomes D:min, D:maj becomes C:maj
    vocab = [tuple(t) for t in json.load(open(f"{out}/key_vocab.json"))]
    key = np.array(songs["001"]["key_ids"])[z["chord"]]
    assert vocab[key[0]] == (-1, 0) and key[0] == 0
    assert vocab[key[16]] == ann.parse_chord_name("D:min") and vocab[key[48]] == ann.parse_chord_name("C:maj")
    assert report["windows"]["train_16"] + report["windows"]["val_16"] + report["windows"]["test_16"] == 4
    assert report["windows"]["val_64"] == report["windows"]["test_64"] == 0
    split = json.load(open(f"{out}/split.json"))
    assert sorted(split["train"] + split["val"] + split["test"]) == ["001", "002", "005", "006"]

    # rerun: everything comes from the cache
    again = prepare(synthetic, jobs=1, verify_files=False, log=lambda *a: None)
    assert again["processed_songs"] == 0 and again["windows"] == report["windows"]
    # a per-song setting change invalidates the cache
    third = prepare({**synthetic, "chord_source": "pop909"}, jobs=2, verify_files=False, log=lambda *a: None)
    assert third["processed_songs"] == 6 and "chord_midi.txt" in third["dropped"]["001"]


def test_window_dataset_items(synthetic):
    torch = pytest.importorskip("torch")
    from stripes.data import WindowDataset

    prepare(synthetic, jobs=1, verify_files=False, log=lambda *a: None)
    split = json.load(open(f"{synthetic['out_dir']}/split.json"))
    sid = split["train"][0]
    for context, dim in [("time", 1), ("bin", 12), ("mcp", 3), ("rep", 1), ("key", 1)]:
        ds = WindowDataset(synthetic["out_dir"], "train", 16, context)
        assert ds.context_dim == dim and len(ds) == len(split["train"])
        item = ds[0]
        assert item["x"].shape == (1024, 256) and item["x"].dtype == torch.float32
        assert item["y"].shape == (1024, 128) and item["pos"].shape == (1024, dim)
        assert item["song"] == sid and item["start"] == 0
    ds = WindowDataset(synthetic["out_dir"], "train", 16, "rep")
    # window of song 001-like content: N (pad), E:min, D:maj -> ranks by global id
    assert sorted(set(ds[0]["pos"][:, 0].tolist())) == [0.0, 1.0, 2.0]
    assert ds[0]["y"][:64, 40 - 0].sum() == 64  # piano pitch 40 on the first 4 quarters
    assert len(WindowDataset(synthetic["out_dir"], "train", 16, "time", max_windows=1)) == 1
    assert len(WindowDataset(synthetic["out_dir"], "test", 64, "time")) == 0


def test_index_filter_reports_non_4_4_songs(synthetic, tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("openpyxl")
    pop = synthetic["pop909_dir"]
    pd.DataFrame({"song_id": [1, 2, 5, 6], "name": list("abcd"), "artist": list("abcd"),
                  "modify_times": [1] * 4, "num_beats_per_measure": [2, 3, 2, 2],
                  "num_quavers_per_beat": [2, 2, 2, 3]}).to_excel(f"{pop}/index.xlsx", index=False)
    report = prepare({**synthetic, "song_filter": "index_4_4", "max_songs": None}, jobs=1,
                     verify_files=False, log=lambda *a: None)
    assert "num_beats_per_measure=3" in report["dropped"]["002"]
    assert "num_quavers_per_beat=3" in report["dropped"]["006"]
    assert report["dropped"]["034"] == "not listed in index.xlsx"
    assert report["songs_kept"] == 2  # 001 and 005 (003 and 004 are broken)


def test_low_agreement_switch_and_cli(synthetic, tmp_path, capsys):
    from stripes.data.prepare import main

    # song 005's melody annotation no longer matches the MIDI: agreement ~ 0
    (tmp_path / "struct" / "POP909" / "005" / "melody.txt").write_text("".join(f"{p + 13} 4\n" for p in MELODY))
    settings = {**synthetic, "exclude_low_agreement": True, "min_agreement": 0.5}
    assert main(["--settings", json.dumps(settings), "--jobs", "2", "--no-verify"]) == 0
    report = json.load(open(f"{synthetic['out_dir']}/report.json"))
    assert report["alignment"]["below_threshold"] == ["005"]
    assert report["dropped"]["005"].startswith("alignment agreement")
    assert "005" in open(f"{synthetic['out_dir']}/report.md").read()
    with pytest.raises(KeyError, match="unknown data setting.*bogus"):
        main(["--settings", json.dumps({"bogus": 1})])
    missing = {**synthetic, "pop909_dir": str(tmp_path / "absent"), "download": False}
    assert main(["--settings", json.dumps(missing), "--no-verify"]) == 1
    assert "not found and download is disabled" in capsys.readouterr().err
