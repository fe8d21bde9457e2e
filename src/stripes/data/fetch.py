"""Resolve and verify the two datasets: POP909 and the Dai et al. structure annotations.

A dataset is resolved from, in order:

1. a local folder (config ``data.pop909_dir`` / ``data.structure_dir``, overridden by the
   environment variables ``STRIPES_POP909`` / ``STRIPES_POP909_STRUCTURE``), the folder that
   holds ``NNN/`` song folders (i.e. ``.../POP909``);
2. else a download of the pinned upstream archive (``data.pop909_url`` / ``data.structure_url``, null: the pinned archive of
   ``stripes.data.sources``; any URL urllib opens, ``file://`` included) into ``data.cache_dir/<name>/POP909``.

Either way every file listed in the committed manifest (``stripes/resources/*.sha256``, lines
``<sha256>  POP909/NNN/file``) must exist and match. Verification hashes files in threads and
remembers verified (path, size, mtime_ns) triples in ``<cache_dir>/verified-<name>.json`` so a
second check only stats the files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

from stripes.data.settings import load_settings
from stripes.data.sources import POP909_COMMIT, SOURCES, STRUCTURE_COMMIT, Source
from stripes.fileio import atomic_write_text

__all__ = ["POP909_COMMIT", "SOURCES", "STRUCTURE_COMMIT", "DataError", "Source", "download", "load_manifest",
           "resolve", "verify"]


class DataError(RuntimeError):
    """A dataset problem the user must fix; the message names the path and the fix."""


def load_manifest(source: Source) -> dict[str, str]:
    """Manifest as {path relative to the POP909 folder (e.g. '001/001.mid'): sha256}."""
    text = resources.files("stripes").joinpath("resources", source.manifest).read_text()
    out = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, rel = line.split(maxsplit=1)
        rel = rel.lstrip("*")
        out[rel.removeprefix("POP909/")] = digest
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(root: Path, source: Source, cache_dir: Path | None = None, threads: int = 8,
           manifest: dict[str, str] | None = None) -> dict:
    """Check every manifest file under ``root``; raise DataError naming the first bad files.

    Returns {"root", "n_files", "n_hashed", "seconds"}. Files verified before with the same
    size and mtime are not hashed again (the record lives in ``cache_dir``). ``manifest``
    ({relative path: sha256}) replaces the committed list (tests).
    """
    t0 = time.perf_counter()
    root = Path(root)
    manifest = load_manifest(source) if manifest is None else manifest
    record_path = Path(cache_dir) / f"verified-{source.name}.json" if cache_dir else None
    record: dict = {}
    if record_path and record_path.exists():
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            record = {}  # a corrupt record only costs a re-hash
    missing, todo, ok = [], [], {}
    for rel, digest in manifest.items():
        p = root / rel
        try:
            st = p.stat()
        except OSError:
            missing.append(rel)
            continue
        stamp = [st.st_size, st.st_mtime_ns, digest]
        if record.get(str(p)) == stamp:
            ok[str(p)] = stamp
        else:
            todo.append((rel, p, stamp))
    if missing:
        shown = ", ".join(str(root / m) for m in missing[:5])
        raise DataError(
            f"{source.name}: {len(missing)} of {len(manifest)} files missing under {root} "
            f"(first: {shown}). Point data.{_dir_key(source)} / ${source.env} at a complete copy of "
            f"the upstream POP909 folder (commit {source.commit}), or unset it to download."
        )
    # hashlib releases the GIL on large buffers, so threads scale on the many small files too
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        digests = list(pool.map(lambda item: _sha256(item[1]), todo))
    bad = [str(p) for (rel, p, stamp), d in zip(todo, digests) if d != stamp[2]]
    for (rel, p, stamp), d in zip(todo, digests):
        if d == stamp[2]:
            ok[str(p)] = stamp
    if record_path:
        record_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record_path, json.dumps(ok))
    if bad:
        raise DataError(
            f"{source.name}: checksum mismatch for {len(bad)} file(s): {', '.join(bad[:5])}. "
            f"Restore the file(s) from upstream commit {source.commit} (or delete the folder "
            f"and unset ${source.env} to download a fresh copy)."
        )
    return {"root": str(root), "n_files": len(manifest), "n_hashed": len(todo),
            "seconds": round(time.perf_counter() - t0, 3)}


def _dir_key(source: Source) -> str:
    return source.dir_key


def download(url: str, dest: Path) -> Path:
    """Download the zip at ``url`` and extract its ``POP909/`` folder to ``dest/POP909``.

    Members are located by their first path component named ``POP909`` (the POP909 zip has it at
    the top, the GitHub repository archive one level down); ``__MACOSX`` entries are skipped.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "POP909"
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        archive = Path(tmp) / "download.zip"
        try:
            with urllib.request.urlopen(url) as r, open(archive, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as e:
            raise DataError(f"download of {url} failed ({e}); set a local folder instead "
                            "(data.pop909_dir / data.structure_dir or the STRIPES_* variables)") from e
        staging = Path(tmp) / "POP909"
        try:
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    parts = Path(info.filename).parts
                    if "__MACOSX" in parts or "POP909" not in parts or info.is_dir():
                        continue
                    rel = Path(*parts[parts.index("POP909") + 1:])
                    if not rel.parts or ".." in rel.parts:
                        continue  # never write outside the staging folder
                    out = staging / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except zipfile.BadZipFile as e:
            raise DataError(f"{url} is not a valid zip archive ({e})") from e
        if not staging.exists():
            raise DataError(f"{url}: the archive has no POP909/ folder")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return target


def resolve(name: str, settings: dict | None = None, verify_files: bool = True,
            threads: int = 8) -> Path:
    """Return the verified POP909-style folder of dataset ``name`` ("pop909" | "structure")."""
    s = load_settings(settings)
    source = SOURCES[name]
    cache = Path(s["cache_dir"])
    local = os.environ.get(source.env) or s.get(_dir_key(source))
    root = None
    if local and Path(local).is_dir():
        root = Path(local)
    else:
        cached = cache / name / "POP909"
        if cached.is_dir():
            root = cached
        elif s.get("download", True):
            url = s[source.url_key] or source.url
            print(f"[fetch] {name}: no local folder ({local}); downloading {url}", file=sys.stderr)
            root = download(url, cache / name)
        else:
            raise DataError(
                f"{name}: dataset folder {local} not found and download is disabled. Set "
                f"${source.env} or data.{_dir_key(source)} to the POP909 folder (the one holding 001/), "
                "or set data.download: true.")
    if verify_files:
        verify(root, source, cache_dir=cache, threads=threads)
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stripes fetch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default=None,
                    help="data settings: a JSON string or a YAML/JSON file (config data section)")
    ap.add_argument("--jobs", type=int, default=8, help="hashing threads")
    ap.add_argument("--out", default=None, help="write the resolved sources as JSON here")
    args = ap.parse_args(argv)
    settings = load_settings(args.settings)
    summary = {}
    try:
        for name in SOURCES:
            t0 = time.perf_counter()
            root = resolve(name, settings, verify_files=False)
            info = verify(root, SOURCES[name], cache_dir=Path(settings["cache_dir"]), threads=args.jobs)
            info["commit"] = SOURCES[name].commit
            summary[name] = info
            print(f"[fetch] {name}: {info['n_files']} files verified under {root} "
                  f"({info['n_hashed']} hashed, {time.perf_counter() - t0:.2f} s)")
    except DataError as e:
        print(f"stripes fetch: error: {e}", file=sys.stderr)
        return 1
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
