"""stripes.audio's listening page: the best row per table, playable in the Snakemake report."""

from __future__ import annotations

import base64
import csv
import io
import re
import wave

import numpy as np

from stripes import audio


def _tone(path, seconds: float, rate: int = audio.SAMPLE_RATE):
    t = np.arange(int(seconds * rate)) / rate
    audio._write_wav(path, np.sin(2 * np.pi * 440 * t), rate)


def _study(tmp_path, with_target: bool = True):
    runs = tmp_path / "eval"
    for pe, ctx in (("rope_c", "bin"), ("nope", "time")):
        s = runs / pe / ctx / "seed3" / "samples"
        s.mkdir(parents=True)
        _tone(s / "test_16_001_0_pred.wav", 2.0)
        if with_target:
            _tone(s / "test_16_001_0_target.wav", 2.0)
    tables = tmp_path / "tables"
    tables.mkdir()
    with open(tables / "t1.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["pe", "context", "cs_16_mean"])
        w.writeheader()
        w.writerow({"pe": "nope", "context": "time", "cs_16_mean": "3.5"})
        w.writerow({"pe": "rope_c", "context": "bin", "cs_16_mean": "18.25"})
        w.writerow({"pe": "failed", "context": "bin", "cs_16_mean": ""})  # a missing cell is no candidate
    spec = {"runs_root": str(runs),
            "tables": {"t1": {"kind": "metrics", "seeds": [3, 4]},
                       "mutual_information": {"kind": "mutual_information", "seeds": []}}}
    return spec, tables


def test_page_clips_pick_the_best_row_and_its_first_seed(tmp_path):
    spec, tables = _study(tmp_path)
    clips = audio.page_clips(spec, tables)
    assert [(c["table"], c["pe"], c["context"], c["seed"], c["cs"]) for c in clips] == [("t1", "rope_c", "bin", 3, 18.25)]
    assert clips[0]["pred"].name == "test_16_001_0_pred.wav"
    assert clips[0]["target"].name == "test_16_001_0_target.wav"


def test_listening_page_embeds_playable_audio_of_the_right_length(tmp_path):
    spec, tables = _study(tmp_path)
    page = audio.listening_page(audio.page_clips(spec, tables), tmp_path / "samples.html").read_text()
    uris = re.findall(r"<audio controls preload='none' src='data:audio/wav;base64,([^']+)'>", page)
    assert len(uris) == 2  # prediction and target
    with wave.open(io.BytesIO(base64.b64decode(uris[0]))) as w:
        assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (1, audio.PAGE_RATE, 2 * audio.PAGE_RATE)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert np.abs(pcm).max() > 0.5 * 32767  # not silent


def test_missing_audio_is_said_not_skipped(tmp_path):
    spec, tables = _study(tmp_path, with_target=False)
    page = audio.listening_page(audio.page_clips(spec, tables), tmp_path / "samples.html").read_text()
    assert page.count("<audio") == 1
    assert "target: <b>no audio</b>" in page


def test_resample_keeps_duration_and_values():
    x = np.linspace(-1, 1, 22050)
    y = audio.resample(x, 22050, 11025)
    assert y.size == 11025
    assert y[0] == -1 and abs(y[-1] - 1) < 2e-4
