"""Fetch: checksum verification errors, the verification record, download from a file:// zip."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from stripes.data import fetch
from stripes.data.fetch import SOURCES, DataError, download, load_manifest, resolve, verify


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tiny(tmp_path):
    root = tmp_path / "POP909"
    files = {"001/001.mid": b"MThd-fake", "001/key_audio.txt": b"0\t10\tC:maj\n"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root, {rel: _digest(d) for rel, d in files.items()}


def test_committed_manifests_cover_both_datasets():
    pop, struct = load_manifest(SOURCES["pop909"]), load_manifest(SOURCES["structure"])
    assert len(pop) == len(struct) == 5455
    assert "001/001.mid" in pop and "index.xlsx" in pop and "909/finalized_chord.txt" in struct


def test_verify_ok_and_record(tiny, tmp_path):
    root, manifest = tiny
    info = verify(root, SOURCES["pop909"], cache_dir=tmp_path / "cache", manifest=manifest)
    assert info["n_files"] == 2 and info["n_hashed"] == 2
    again = verify(root, SOURCES["pop909"], cache_dir=tmp_path / "cache", manifest=manifest)
    assert again["n_hashed"] == 0  # size+mtime unchanged: not hashed again


def test_checksum_mismatch_names_the_file(tiny, tmp_path):
    root, manifest = tiny
    verify(root, SOURCES["pop909"], cache_dir=tmp_path / "cache", manifest=manifest)
    (root / "001" / "key_audio.txt").write_bytes(b"0\t10\tD:maj\n")  # same size, new content
    with pytest.raises(DataError, match=r"checksum mismatch .*001/key_audio\.txt.*Restore"):
        verify(root, SOURCES["pop909"], cache_dir=tmp_path / "cache", manifest=manifest)


def test_missing_file_names_the_file_and_the_fix(tiny):
    root, manifest = tiny
    (root / "001" / "001.mid").unlink()
    with pytest.raises(DataError, match=r"missing .*001/001\.mid.*STRIPES_POP909"):
        verify(root, SOURCES["pop909"], manifest=manifest)


def test_download_from_file_url(tiny, tmp_path):
    root, manifest = tiny
    archive = tmp_path / "upstream.zip"
    with zipfile.ZipFile(archive, "w") as z:  # GitHub-archive layout: POP909/ one level down
        for rel in manifest:
            z.write(root / rel, f"repo-abc/POP909/{rel}")
        z.writestr("__MACOSX/POP909/001/._001.mid", b"junk")
        z.writestr("repo-abc/README.md", b"not part of the dataset")
    got = download(archive.as_uri(), tmp_path / "dl")
    assert got == tmp_path / "dl" / "POP909"
    assert sorted(str(p.relative_to(got)) for p in got.rglob("*") if p.is_file()) == sorted(manifest)
    verify(got, SOURCES["pop909"], manifest=manifest)


def test_resolve_prefers_env_then_downloads(tiny, tmp_path, monkeypatch):
    root, manifest = tiny
    monkeypatch.setenv("STRIPES_POP909", str(root))
    assert resolve("pop909", {"cache_dir": str(tmp_path / "c")}, verify_files=False) == root
    archive = tmp_path / "up.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for rel in manifest:
            z.write(root / rel, f"POP909/{rel}")
    monkeypatch.setenv("STRIPES_POP909", str(tmp_path / "nowhere"))
    got = resolve("pop909", {"cache_dir": str(tmp_path / "c"), "pop909_url": archive.as_uri()},
                  verify_files=False)
    assert got == tmp_path / "c" / "pop909" / "POP909" and (got / "001" / "001.mid").exists()
    with pytest.raises(DataError, match="download is disabled"):
        resolve("structure", {"cache_dir": str(tmp_path / "c2"), "download": False,
                              "structure_dir": str(tmp_path / "nothing")}, verify_files=False)


def test_bad_url_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="download of .* failed"):
        download((tmp_path / "absent.zip").as_uri(), tmp_path / "dl")


def test_cli_fetch_fails_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STRIPES_POP909", str(tmp_path))  # exists but holds no files
    rc = fetch.main(["--settings", f'{{"cache_dir": "{tmp_path}/c", "download": false}}'])
    assert rc == 1 and "files missing under" in capsys.readouterr().err
