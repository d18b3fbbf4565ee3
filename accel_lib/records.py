"""The workspace's records. This module owns ``state.sqlite``: its schema and version, the
migrations that open older ones, one typed record per table with its row mapping, and the queries the Azure-shaped
classes share (get, latest and next version, users-of, set-status). No other module writes SQL. Where everything
else in the workspace folder lives is ``layout``'s.

Version 3 (this accel_lib): a service's record keeps what its deployment settled (``settled``: generation, runtime,
engine, container image) apart from what the user asked (``config``). Version 2: images record the container image
built from their context (``container``: its tag). Version 1: the replicas table holds only where each replica runs
(service, idx, compute, fpga); version 0 also had pid, port and log columns that nothing wrote or read.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sqlite3
from pathlib import Path
from typing import ClassVar

from .errors import UserError

SCHEMA_VERSION = 3
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
    context TEXT NOT NULL, created_time TEXT NOT NULL, container TEXT, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS computes (
    name TEXT PRIMARY KEY, vm_size TEXT NOT NULL, agent_count INTEGER NOT NULL, location TEXT NOT NULL,
    kind TEXT NOT NULL, provisioning_state TEXT NOT NULL, provisioning_errors TEXT, created_time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY, image_name TEXT NOT NULL, image_version INTEGER NOT NULL, compute TEXT NOT NULL,
    config TEXT NOT NULL, state TEXT NOT NULL, keys TEXT, error TEXT, created_time TEXT NOT NULL,
    settled TEXT);
CREATE TABLE IF NOT EXISTS replicas (
    service TEXT NOT NULL, idx INTEGER NOT NULL, compute TEXT NOT NULL, fpga INTEGER NOT NULL,
    PRIMARY KEY (service, idx), UNIQUE (compute, fpga));
"""
MIGRATIONS = {        # version reached -> what takes a workspace of the version before to it
    1: ["ALTER TABLE replicas DROP COLUMN pid", "ALTER TABLE replicas DROP COLUMN port",
        "ALTER TABLE replicas DROP COLUMN log"],
    2: ["ALTER TABLE images ADD COLUMN container TEXT"],
    3: ["ALTER TABLE services ADD COLUMN settled TEXT",       # taken out of version 2's config, as it settled them
        "UPDATE services SET settled = json_object("
        "'generation', coalesce(json_extract(config, '$.generation'), 0), "
        "'runtime', coalesce(json_extract(config, '$.runtime'), 'process'), "
        "'engine', coalesce(json_extract(config, '$.engine'), ''), "
        "'container_image', CASE WHEN json_extract(config, '$.runtime') = 'container' THEN coalesce("
        "(SELECT container FROM images WHERE images.name = image_name AND images.version = image_version), '') "
        "ELSE '' END, "
        "'format', 'accel_lib.service-settled/1')"],
}


def now() -> str:
    """The time now (UTC, ISO 8601, to the second), as the records store it."""
    import datetime as _dt
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# -- the vocabulary: states and kinds as the records store them; every module names them from here ---------------
QUEUED, RUNNING, SUCCEEDED, FAILED = "Queued", "Running", "Succeeded", "Failed"    # operations, images, computes
UNDER_WAY = (QUEUED, RUNNING)                       # an operation not yet done
TRANSITIONING, HEALTHY, REPLACED = "Transitioning", "Healthy", "Replaced"          # a service's recorded state
UNHEALTHY, DELETED = "Unhealthy", "Deleted"         # and, with FAILED, what else its observed state may be
AKS, EDGE = "aks", "edge"                           # a compute's kind: an AKS cluster, an edge device


# -- names ------------------------------------------------------------------------------------------
NAME_RULE = re.compile(r"[a-z0-9][a-z0-9._-]{0,254}\Z")       # \Z: '$' would let a trailing newline through
NAME_RULE_TEXT = ("names are 1-255 characters of lowercase letters, digits, '.', '_' and '-', "
                  "starting with a letter or digit")


def check_name(name, what="model"):
    """Raise UserError unless ``name`` follows the naming rule."""
    if not isinstance(name, str) or not NAME_RULE.match(name):
        hint = f" (try {name.lower()!r})" if isinstance(name, str) and NAME_RULE.match(name.lower()) else ""
        raise UserError(f"invalid {what} name {name!r}: {NAME_RULE_TEXT}{hint}.")
    return name


# -- typed records ----------------------------------------------------------------------------------
def _json(default=None):
    """A field stored as JSON text (``None`` stays NULL)."""
    return dataclasses.field(default=default, metadata={"codec": (json.dumps, json.loads)})


def _config_codec():
    from .fpga.cluster import specs
    return (lambda c: c.to_json(), specs.ServiceConfig.from_json)


def _settled_codec():
    from .fpga.cluster import specs
    return (lambda c: c.to_json(), specs.Settled.from_json)


@dataclasses.dataclass
class Record:
    """One row of a table: TABLE names it, KEY its primary key, STATUS the column ``set_status`` writes."""
    TABLE: ClassVar[str] = ""
    KEY: ClassVar[tuple] = ("name",)
    STATUS: ClassVar[str | None] = None

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def _codec(cls, f):
        codec = f.metadata.get("codec")
        return codec() if callable(codec) else codec

    @classmethod
    def from_row(cls, row) -> "Record":
        """The record of a ``sqlite3.Row`` of its table."""
        values = {}
        for f in dataclasses.fields(cls):
            v, codec = row[f.name], cls._codec(f)
            values[f.name] = codec[1](v) if codec and v is not None else v
        return cls(**values)

    def to_row(self) -> tuple:
        """The column values, in the table's order, as stored."""
        out = []
        for f in dataclasses.fields(self):
            v, codec = getattr(self, f.name), self._codec(f)
            out.append(codec[0](v) if codec and v is not None else v)
        return tuple(out)

    @property
    def key(self) -> dict:
        return {k: getattr(self, k) for k in self.KEY}


class Attached:
    """The one mapping from a record to the Azure-shaped object over it (Model, Image, ComputeTarget, Webservice):
    each column becomes the attribute of its name, or of ``RENAMED``'s; ``SKIPPED`` columns stay in the records
    (read fresh: a key, a state); ``_derive`` adds what the object computes from its record."""
    RENAMED: ClassVar[dict] = {}
    SKIPPED: ClassVar[tuple] = ()

    @classmethod
    def from_record(cls, workspace, rec: Record, **extra):
        """The object of a record (no query); ``extra`` goes to ``_derive``."""
        obj = cls.__new__(cls)
        obj._attach(workspace, rec, **extra)
        return obj

    def _attach(self, workspace, rec: Record, **extra):
        self.workspace = workspace
        for f in dataclasses.fields(rec):
            if f.name not in self.SKIPPED:
                setattr(self, self.RENAMED.get(f.name, f.name), getattr(rec, f.name))
        self._derive(rec, **extra)

    def _derive(self, rec, **extra):
        """What the object computes from its record (nothing, unless a class says)."""


@dataclasses.dataclass
class ModelRecord(Record):
    TABLE: ClassVar[str] = "models"
    KEY: ClassVar[tuple] = ("name", "version")
    name: str = ""
    version: int = 0
    description: str | None = None
    tags: dict = _json()
    properties: dict = _json()
    created_time: str = ""
    files: dict = _json()              # relative path -> sha256
    kind: str = "folder"               # "file" or "folder"


@dataclasses.dataclass
class OperationRecord(Record):
    TABLE: ClassVar[str] = "operations"
    KEY: ClassVar[tuple] = ("id",)
    STATUS: ClassVar[str] = "status"
    id: str = ""
    kind: str = "convert"
    status: str = QUEUED               # QUEUED, then RUNNING, then SUCCEEDED or FAILED
    log: str = ""                      # relative to the workspace
    request: dict = _json()
    result: str | None = None          # the id of the model it made
    error: str | None = None
    pid: int | None = None
    created_time: str = ""


@dataclasses.dataclass
class ImageRecord(Record):
    TABLE: ClassVar[str] = "images"
    KEY: ClassVar[tuple] = ("name", "version")
    STATUS: ClassVar[str] = "creation_state"
    name: str = ""
    version: int = 0
    model_name: str = ""
    model_version: int = 0
    description: str | None = None
    tags: dict = _json()
    properties: dict = _json()
    creation_state: str = RUNNING      # RUNNING, then SUCCEEDED or FAILED
    context: str = ""                  # relative to the workspace
    created_time: str = ""
    container: str | None = None       # the container image built from the context (its tag), if one was


@dataclasses.dataclass
class ComputeRecord(Record):
    TABLE: ClassVar[str] = "computes"
    KEY: ClassVar[tuple] = ("name",)
    STATUS: ClassVar[str] = "provisioning_state"
    name: str = ""
    vm_size: str = ""
    agent_count: int = 1
    location: str = ""
    kind: str = AKS                    # AKS or EDGE
    provisioning_state: str = SUCCEEDED
    provisioning_errors: str | None = None
    created_time: str = ""


@dataclasses.dataclass
class ServiceRecord(Record):
    TABLE: ClassVar[str] = "services"
    KEY: ClassVar[tuple] = ("name",)
    STATUS: ClassVar[str] = "state"
    name: str = ""
    image_name: str = ""
    image_version: int = 0
    compute: str = ""
    config: object = dataclasses.field(default=None, metadata={"codec": _config_codec})  # specs.ServiceConfig
    state: str = TRANSITIONING         # TRANSITIONING, HEALTHY, REPLACED
    keys: list | None = _json()
    error: str | None = None           # why it stopped serving (on an edge device: which service replaced it)
    created_time: str = ""
    settled: object = dataclasses.field(default=None, metadata={"codec": _settled_codec})  # specs.Settled


@dataclasses.dataclass
class ReplicaRecord(Record):
    TABLE: ClassVar[str] = "replicas"
    KEY: ClassVar[tuple] = ("service", "idx")
    service: str = ""
    idx: int = 0
    compute: str = ""
    fpga: int = 0


# -- queries ----------------------------------------------------------------------------------------
def _where(cls, where: dict):
    bad = set(where) - set(cls.columns())
    if bad:
        raise ValueError(f"{cls.__name__} has no column {sorted(bad)}")
    if not where:
        return "", ()
    return " WHERE " + " AND ".join(f"{k}=?" for k in where), tuple(where.values())


def find(db, cls, order_by=None, **where) -> list:
    """The records of ``cls``'s table whose columns equal ``where`` (all of them without it), in key order."""
    clause, args = _where(cls, where)
    order = order_by or cls.KEY
    return [cls.from_row(r) for r in db.execute(f"SELECT * FROM {cls.TABLE}{clause} ORDER BY {', '.join(order)}",
                                                args)]


def get(db, cls, **key):
    """The one record with this key (all of KEY given), or None."""
    found = find(db, cls, **key)
    return found[0] if found else None


def exists(db, cls, **where) -> bool:
    """Whether a record with these column values exists."""
    clause, args = _where(cls, where)
    return db.execute(f"SELECT 1 FROM {cls.TABLE}{clause} LIMIT 1", args).fetchone() is not None


def latest(db, cls, name):
    """The highest version of ``name`` (a versioned table: models, images), or None."""
    found = find(db, cls, order_by=("version DESC",), name=name)
    return found[0] if found else None


def next_version(db, cls, name) -> int:
    """The version the next registration of ``name`` gets (1 for a new name)."""
    (last,) = db.execute(f"SELECT COALESCE(MAX(version), 0) FROM {cls.TABLE} WHERE name=?", (name,)).fetchone()
    return last + 1


def versions(db, cls, name) -> list[int]:
    """Every version of ``name``, ascending."""
    return [r.version for r in find(db, cls, name=name)]


def names(db, cls) -> list[str]:
    """The distinct names in ``cls``'s table, sorted."""
    return [r[0] for r in db.execute(f"SELECT DISTINCT name FROM {cls.TABLE} ORDER BY name")]


def insert(db, record: Record):
    """Add ``record`` to its table."""
    cols = record.columns()
    db.execute(f"INSERT INTO {record.TABLE} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
               record.to_row())


def update(db, record: Record, *fields):
    """Write ``fields`` of ``record`` (all but the key without them) to its row."""
    fields = fields or [c for c in record.columns() if c not in record.KEY]
    row = dict(zip(record.columns(), record.to_row()))
    clause, args = _where(type(record), record.key)
    db.execute(f"UPDATE {record.TABLE} SET {', '.join(f'{f}=?' for f in fields)}{clause}",
               tuple(row[f] for f in fields) + args)


def delete(db, cls, **where) -> int:
    """Remove the records whose columns equal ``where`` (at least one column); returns how many."""
    if not where:
        raise ValueError("delete needs a condition")
    clause, args = _where(cls, where)
    return db.execute(f"DELETE FROM {cls.TABLE}{clause}", args).rowcount


def set_status(db, cls, key: dict, status, only_from=(), **more) -> bool:
    """Set the status column of one record (and other columns ``more``), only while it is one of ``only_from``
    when given; returns whether it changed."""
    values = {cls.STATUS: status, **more}
    clause, args = _where(cls, key)
    if only_from:
        clause += f" AND {cls.STATUS} IN ({', '.join('?' * len(only_from))})"
        args += tuple(only_from)
    cur = db.execute(f"UPDATE {cls.TABLE} SET {', '.join(f'{k}=?' for k in values)}{clause}",
                     tuple(values.values()) + args)
    return cur.rowcount > 0


USED_BY = {   # a record -> the records that refer to it (what must go before it may be deleted)
    ModelRecord: (ImageRecord, {"model_name": "name", "model_version": "version"}),
    ImageRecord: (ServiceRecord, {"image_name": "name", "image_version": "version"}),
    ComputeRecord: (ServiceRecord, {"compute": "name"}),
}


def users_of(db, record: Record) -> list:
    """The records that use ``record`` (images of a model, services of an image or a compute)."""
    cls, refs = USED_BY[type(record)]
    return find(db, cls, **{col: getattr(record, attr) for col, attr in refs.items()})


# -- the state file ---------------------------------------------------------------------------------
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
