"""The workspace's records: the schema of ``state.sqlite``, its version and the migrations that open older ones,
and the time stamps the records hold.

Version 1 (this accel_lib): the replicas table holds only where each replica runs (service, idx, compute, fpga);
version 0 (accel_lib before it) also had pid, port and log columns that nothing wrote or read.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from .errors import UserError

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL, version INTEGER NOT NULL, description TEXT, tags TEXT NOT NULL,
    properties TEXT NOT NULL, created_time TEXT NOT NULL, files TEXT NOT NULL, kind TEXT NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, log TEXT NOT NULL,
    request TEXT NOT NULL, result TEXT, error TEXT, pid INTEGER, created_time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    name TEXT NOT NULL, version INTEGER NOT NULL, model_name TEXT NOT NULL, model_version INTEGER NOT NULL,
    description TEXT, tags TEXT NOT NULL, properties TEXT NOT NULL, creation_state TEXT NOT NULL,
    context TEXT NOT NULL, created_time TEXT NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS computes (
    name TEXT PRIMARY KEY, vm_size TEXT NOT NULL, agent_count INTEGER NOT NULL, location TEXT NOT NULL,
    kind TEXT NOT NULL, provisioning_state TEXT NOT NULL, provisioning_errors TEXT, created_time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY, image_name TEXT NOT NULL, image_version INTEGER NOT NULL, compute TEXT NOT NULL,
    config TEXT NOT NULL, state TEXT NOT NULL, keys TEXT, error TEXT, created_time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS replicas (
    service TEXT NOT NULL, idx INTEGER NOT NULL, compute TEXT NOT NULL, fpga INTEGER NOT NULL,
    PRIMARY KEY (service, idx), UNIQUE (compute, fpga));
"""
MIGRATIONS = {        # version reached -> what takes a workspace of the version before to it
    1: ["ALTER TABLE replicas DROP COLUMN pid", "ALTER TABLE replicas DROP COLUMN port",
        "ALTER TABLE replicas DROP COLUMN log"],
}


def now() -> str:
    """The time now (UTC, ISO 8601, to the second), as the records store it."""
    import datetime as _dt
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def open_state(path: Path):
    """Make ``path`` a state file of this version: created 0600 (it holds the services' keys) with the schema, or
    an older one migrated in one transaction (two processes opening it at once migrate it once)."""
    path = Path(path)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))        # the keys live here: 0600 from birth
    elif path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)                                            # made by an older accel_lib
    with transaction(path, immediate=True) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        fresh = db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0] == 0
        if version > SCHEMA_VERSION:
            raise UserError(f"{path} was written by a newer accel_lib (records version {version}; this one reads "
                            f"up to {SCHEMA_VERSION}): upgrade accel_lib to open this workspace.")
        if not fresh:
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target]:
                    db.execute(statement)
        for statement in filter(str.strip, SCHEMA.split(";")):
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextlib.contextmanager
def transaction(path, immediate=False):
    """A SQLite connection to the state file ``path`` inside one transaction (committed at the end, rolled back on
    any error); ``immediate`` takes the write lock at once. Rows read as ``sqlite3.Row``."""
    db = sqlite3.connect(path, timeout=60, isolation_level=None)
    db.row_factory = sqlite3.Row
    try:
        db.execute("PRAGMA busy_timeout = 60000")
        db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    finally:
        db.close()
