"""Where the study keeps its shared state when it runs on many machines (scale-out storage).

Two stores are shared by the jobs of one study:

* MLflow (``mlflow.tracking_uri``): the embedded SQLite DB by default
  (``sqlite:///results/mlflow/mlflow.db``); for many machines a PostgreSQL database
  (``postgresql://USER@HOST:PORT/DB``, SQLAlchemy's URL form, psycopg2 driver from the ``[slurm]``
  extra) or an ``mlflow server`` URL (``http(s)://HOST:PORT``). The ``mlflow_init`` rule creates the
  schema and the experiment before any parallel job, whatever the backend.
* Optuna (``tune.storage``): by default a journal file per study
  (``results/tune/{pe}/{context}/work/study.journal``, ``JournalFileBackend``), which also works on
  a shared file system (NFS: ``journal_lock: open`` selects ``JournalFileOpenLock``, for NFSv3 or
  later; the default ``symlink`` lock works from NFSv2); or an RDB (``backend: rdb``,
  ``url: postgresql://...``, Optuna's ``RDBStorage``).

Passwords never go into a config file: libpq reads them from ``~/.pgpass`` (mode 0600) or
``$PGPASSWORD``; :func:`redact` hides a password that is in a URL anyway before it is logged.

Nothing here imports optuna, mlflow or sqlalchemy at module import time (the DAG parses fast).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

#: accepted ``mlflow.tracking_uri`` prefixes (the schema's pattern says the same)
TRACKING_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+psycopg2://", "http://", "https://")
#: accepted ``tune.storage.url`` prefixes for ``backend: rdb``
RDB_SCHEMES = ("postgresql://", "postgresql+psycopg2://", "sqlite:///", "mysql://", "mysql+pymysql://")
DEFAULT_OPTUNA_STORAGE: dict[str, Any] = {"backend": "journal", "url": None, "journal_lock": "symlink"}


class StorageError(ValueError):
    """A storage setting that cannot work; the message names the config key."""


def redact(url: str | None) -> str:
    """``scheme://user:secret@host/db`` -> ``scheme://user:***@host/db`` (for logs and errors)."""
    if not url:
        return str(url)
    return re.sub(r"(://[^/:@]+):[^@/]*@", r"\1:***@", url)


def check_tracking_uri(uri: str) -> str:
    if not isinstance(uri, str) or not uri.startswith(TRACKING_SCHEMES):
        raise StorageError(f"mlflow.tracking_uri {redact(uri)!r}: expected one of "
                           f"{', '.join(s + '...' for s in TRACKING_SCHEMES)}")
    return uri


def optuna_storage_settings(storage: dict | str | None) -> dict:
    """Normalise ``tune.storage`` (None -> the journal default; a bare URL -> rdb) and check it."""
    if storage is None:
        return dict(DEFAULT_OPTUNA_STORAGE)
    if isinstance(storage, str):
        storage = {"backend": "rdb", "url": storage}
    out = dict(DEFAULT_OPTUNA_STORAGE)
    unknown = set(storage) - set(out)
    if unknown:
        raise StorageError(f"tune.storage: unknown key(s) {sorted(unknown)}; known: {sorted(out)}")
    out.update({k: v for k, v in storage.items() if v is not None})
    if out["backend"] not in ("journal", "rdb"):
        raise StorageError(f"tune.storage.backend {out['backend']!r}: expected 'journal' or 'rdb'")
    if out["journal_lock"] not in ("symlink", "open"):
        raise StorageError(f"tune.storage.journal_lock {out['journal_lock']!r}: expected 'symlink' or 'open'")
    if out["backend"] == "rdb":
        url = out.get("url")
        if not url or not str(url).startswith(RDB_SCHEMES):
            raise StorageError(f"tune.storage.url {redact(url)!r}: backend 'rdb' needs a database URL "
                               f"({', '.join(s + '...' for s in RDB_SCHEMES)})")
    elif out.get("url"):
        raise StorageError("tune.storage.url is only used with backend: rdb (the journal backend keeps "
                           "one file per study under results/tune/)")
    return out


def study_name(pe: str, context: str, settings: dict, fingerprint: str) -> str:
    """Journal: ``pe.context`` (one file per study; a stale file is moved aside by stripes.tune).

    RDB: one database holds every study, and a changed config or spec must not resume an old
    study, so the name carries the study fingerprint (the old study stays in the database).
    """
    if settings["backend"] == "rdb":
        return f"{pe}.{context}.{fingerprint}"
    return f"{pe}.{context}"


def journal_storage(path: str | Path, lock: str = "symlink"):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    path = str(path)
    lock_obj = JournalFileOpenLock(path) if lock == "open" else None  # None: Optuna's symlink lock
    return JournalStorage(JournalFileBackend(path, lock_obj=lock_obj))


def rdb_storage(url: str, attempts: int = 5, wait_s: float = 2.0):
    """Optuna ``RDBStorage`` on ``url``; retried because several tune jobs may start on a fresh
    database at once and race on creating its tables (the loser gets an IntegrityError /
    ProgrammingError; after the winner finished, a retry finds the tables)."""
    from optuna.storages import RDBStorage

    last: Exception | None = None
    for i in range(attempts):
        try:
            # pool_pre_ping: a trial can train for hours; the server may drop idle connections
            return RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except Exception as exc:  # noqa: BLE001 - sqlalchemy / alembic errors of the schema race
            last = exc
            time.sleep(wait_s * (i + 1))
    raise StorageError(f"tune.storage.url {redact(url)}: cannot open the Optuna RDB storage "
                       f"after {attempts} attempts: {last!r}")


def open_optuna_storage(settings: dict, journal_path: str | Path):
    """The Optuna storage object of ``settings`` (journal: at ``journal_path``)."""
    if settings["backend"] == "rdb":
        return rdb_storage(settings["url"])
    Path(journal_path).parent.mkdir(parents=True, exist_ok=True)
    return journal_storage(journal_path, settings.get("journal_lock", "symlink"))


def export_study_journal(from_storage, from_name: str, to_path: str | Path, to_name: str) -> None:
    """Copy a study (any storage) into a fresh journal file ``to_path`` named ``to_name``.

    The tune rule's declared output ``study.journal`` stays a self-contained record of the study
    (readable by optuna-dashboard) whichever backend ran it.
    """
    import optuna

    from stripes.fileio import atomic_path

    with atomic_path(to_path) as tmp:
        optuna.copy_study(from_study_name=from_name, from_storage=from_storage,
                          to_storage=journal_storage(tmp), to_study_name=to_name)
