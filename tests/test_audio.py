"""stripes.audio: sample MIDI -> WAV with FluidSynth or the numpy fallback; samples.write_samples."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stripes import audio
from stripes import samples as S

RENDERERS = [
    "numpy",
    pytest.param("fluidsynth", marks=pytest.mark.skipif(
        not audio.fluidsynth_available(),
        reason="fluidsynth or a GM soundfont is not installed (apt-get install fluidsynth fluid-soundfont-gm)")),
]
RMS_FLOOR = 0.01  # -40 dBFS; the renderers normalise the peak to 0.9


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0


def _song(path, frames: int = 256):
    """A melody (one 8th note per beat), a held bridge note and a piano chord per bar; at 120
    bpm and 16 ticks per beat one frame is 1/32 s."""
    mel, bridge, piano = (np.zeros((frames, 128)) for _ in range(3))
    for i, start in enumerate(range(0, frames - 16, 16)):
        mel[start:start + 8, 64 + (i % 5)] = 1
    bridge[0:frames // 2, 52] = 1
    for bar in range(0, frames - 8, 64):
        piano[bar:bar + 48, [48, 55, 60]] = 1
    return S.write_midi(path, {"MELODY": mel, "BRIDGE": bridge, "PIANO": piano})


@pytest.mark.parametrize("renderer", RENDERERS)
def test_render_is_audible_and_as_long_as_the_midi(tmp_path, renderer):
    from miditoolkit.midi.parser import MidiFile

    mid = _song(tmp_path / "song.mid")
    assert audio.render(mid, tmp_path / "song.wav", renderer) == renderer
    x, rate = audio.read_wav(tmp_path / "song.wav")
    midi = MidiFile(str(mid))
    duration = float(midi.get_tick_to_time_mapping()[midi.max_tick])
    # the last piano chord ends at frame 240; the end-of-track event is one tick later and
    # miditoolkit's max_tick one past that
    assert (midi.max_tick, duration) == (242, 242 / 32)
    assert (rate, x.shape) == (22050, (round((duration + audio.TAIL_S) * 22050), 1))
    assert _rms(x) > RMS_FLOOR
    # sound all along, not only at the start: every second up to the last note is audible
    for sec in range(int(duration)):
        assert _rms(x[sec * rate:(sec + 1) * rate]) > RMS_FLOOR, f"silent second {sec}"


def test_the_same_midi_file_is_rendered_once_per_process(tmp_path, monkeypatch):
    """A target window is the same MIDI file for every seed of a (pe, context); their runs share a
    process (study.fuse_train_eval), which renders it once and writes each WAV from that."""
    calls = []
    real = audio._render_mono
    monkeypatch.setattr(audio, "_render_mono", lambda path, choice: calls.append(path.name) or real(path, choice))
    a = _song(tmp_path / "seed0" / "target.mid")
    b = _song(tmp_path / "seed1" / "target.mid")  # the same bytes in another run's folder
    assert a.read_bytes() == b.read_bytes()
    assert audio.render(a, tmp_path / "a.wav", "numpy") == audio.render(b, tmp_path / "b.wav", "numpy") == "numpy"
    assert calls == ["target.mid"] and (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    audio.render(b, tmp_path / "c.wav", "auto")  # another renderer choice: rendered again
    roll = np.zeros((64, 128))
    roll[0:48, 69] = 1
    other = S.write_midi(tmp_path / "other.mid", {"PIANO": roll})  # other bytes: rendered again
    audio.render(other, tmp_path / "d.wav", "numpy")
    assert calls == ["target.mid", "target.mid", "other.mid"]
    x, _ = audio.read_wav(tmp_path / "b.wav")
    assert _rms(x) > RMS_FLOOR


@pytest.mark.parametrize("renderer", RENDERERS)
def test_render_plays_the_right_pitch(tmp_path, renderer):
    roll = np.zeros((64, 128))
    roll[0:48, 69] = 1  # A4 for 1.5 s
    mid = S.write_midi(tmp_path / "a4.mid", {"PIANO": roll})
    audio.render(mid, tmp_path / "a4.wav", renderer)
    x, rate = audio.read_wav(tmp_path / "a4.wav")
    seg = x[: rate, 0] * np.hanning(rate)  # the first second: 1 Hz bins
    peak_hz = int(np.argmax(np.abs(np.fft.rfft(seg))))
    assert abs(peak_hz - 440) <= 2


def test_auto_falls_back_to_numpy_when_fluidsynth_fails(tmp_path, monkeypatch):
    mid = _song(tmp_path / "song.mid", frames=64)
    monkeypatch.setattr(audio, "fluidsynth_available", lambda: True)

    def broken(*_a, **_k):
        raise audio.RenderError("no preset")

    monkeypatch.setattr(audio, "_fluidsynth", broken)
    assert audio.render(mid, tmp_path / "a.wav", "auto") == "numpy"
    assert _rms(audio.read_wav(tmp_path / "a.wav")[0]) > RMS_FLOOR
    with pytest.raises(audio.RenderError):
        audio.render(mid, tmp_path / "b.wav", "fluidsynth")
    monkeypatch.setattr(audio, "fluidsynth_available", lambda: False)
    monkeypatch.setenv("STRIPES_AUDIO", "auto")
    assert audio.render(mid, tmp_path / "c.wav") == "numpy"
    with pytest.raises(ValueError):
        audio.render(mid, tmp_path / "d.wav", "timidity")


def _items(frames: int = 64):
    x = np.zeros((frames, 256))
    x[0:16, 60] = x[16:32, 62] = 1  # melody
    x[0:frames, 128 + 48] = 1  # bridge
    target = np.zeros((frames, 128))
    target[0:32, [52, 55]] = 1
    pred = np.zeros((frames, 128))
    pred[8:40, 52] = 1
    return [{"setting": "test_16", "song": "007", "start": 128, "x": x, "pred": pred, "target": target}]


def test_write_samples_renders_every_midi_and_records_the_renderer(tmp_path, monkeypatch):
    monkeypatch.setenv("STRIPES_AUDIO", "numpy")
    paths = S.write_samples(tmp_path / "samples", _items())
    names = sorted(p.name for p in paths)
    assert names == ["audio.json", "test_16_007_128.png", "test_16_007_128_pred.mid", "test_16_007_128_pred.wav",
                     "test_16_007_128_target.mid", "test_16_007_128_target.wav"]
    rec = json.loads((tmp_path / "samples" / "audio.json").read_text())
    assert rec == {"sample_rate": 22050, "tail_s": 1.0, "soundfont": None, "errors": {},
                   "renderers": {"test_16_007_128_pred.wav": "numpy", "test_16_007_128_target.wav": "numpy"}}
    for kind in ("pred", "target"):
        assert _rms(audio.read_wav(tmp_path / "samples" / f"test_16_007_128_{kind}.wav")[0]) > RMS_FLOOR


def test_write_samples_records_an_audio_error_and_keeps_the_midi(tmp_path, monkeypatch):
    def broken(midi_path, wav_path, renderer=None):
        raise OSError("disk full")

    monkeypatch.setattr(audio, "render", broken)
    paths = S.write_samples(tmp_path / "samples", _items())
    assert sorted(p.suffix for p in paths) == [".json", ".mid", ".mid", ".png"]
    rec = json.loads((tmp_path / "samples" / "audio.json").read_text())
    assert rec["renderers"] == {} and rec["errors"] == {"test_16_007_128_pred.wav": "OSError('disk full')",
                                                        "test_16_007_128_target.wav": "OSError('disk full')"}


def test_audio_off_writes_no_wav(tmp_path, monkeypatch):
    monkeypatch.setenv("STRIPES_AUDIO", "off")
    paths = S.write_samples(tmp_path / "samples", _items())
    assert sorted(p.suffix for p in paths) == [".mid", ".mid", ".png"]
    assert not list((tmp_path / "samples").glob("*.wav"))
