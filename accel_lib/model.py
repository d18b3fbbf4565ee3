"""Model: register, get, list and delete versioned models in a workspace."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from . import records
from .records import check_name
from .errors import UserError
from .workspace import Workspace

CONVERTED_SUFFIX = ".accelonnx"


def converted_name(name, version) -> str:
    """The name a conversion of model ``name`` version ``version`` is registered under: '<name>.<version>.accelonnx'."""
    return f"{name}.{version}{CONVERTED_SUFFIX}"


def of_family(model_name, candidate) -> bool:
    """Whether ``candidate`` is the model ``model_name`` or one of its conversions ('<model_name>.<v>.accelonnx')."""
    if candidate == model_name:
        return True
    head, _, tail = candidate.removesuffix(CONVERTED_SUFFIX).rpartition(".")
    return candidate.endswith(CONVERTED_SUFFIX) and head == model_name and tail.isdigit()


def tensor_names(model):
    """(input name, output names) recorded in a registered or converted model's metadata, for conversion and
    scoring."""
    from .fpga.device import manifest
    if manifest.MANIFEST_FILE in model.files:
        m = model.manifest
        return m.input.name, list(m.outputs)
    meta = model.source_metadata
    return meta.input.name, meta.default_output_names()


class Model(records.Attached):
    """A registered model. ``Model(ws, name, version=None)`` fetches one (latest version by default)."""

    def __init__(self, workspace: Workspace, name: str | None = None, version: int | None = None,
                 id: str | None = None):
        if id is not None:
            name, _, v = id.rpartition(":")
            version = int(v)
        with workspace.connect() as db:
            rec = (records.latest(db, records.ModelRecord, name) if version is None
                   else records.get(db, records.ModelRecord, name=name, version=int(version)))
            if rec is None:
                known = records.names(db, records.ModelRecord)
                versions = records.versions(db, records.ModelRecord, name)
        if rec is None:
            if versions:
                raise UserError(f"model {name!r} has no version {version}; it has versions {versions}.")
            raise UserError(f"no model named {name!r} in workspace {workspace.name!r}; "
                            f"registered models: {known or 'none'}. Register it with Model.register(...).")
        self._attach(workspace, rec)

    id = property(lambda self: f"{self.name}:{self.version}", doc="name:version")
    url = property(lambda self: f"models/{self.name}/{self.version}", doc="where the model lives in the workspace")

    def __repr__(self):
        return f"Model(name={self.name!r}, version={self.version}, tags={self.tags})"

    # -- registry -----------------------------------------------------------------------------
    @classmethod
    def register(cls, workspace, model_path, model_name, tags=None, properties=None, description=None):
        """Copy a file or folder into the workspace as the next version of ``model_name``."""
        check_name(model_name)
        src = Path(model_path)
        if not src.exists():
            raise UserError(f"model_path {str(model_path)!r} does not exist; save the model there first.")
        for label, d in (("tags", tags), ("properties", properties)):
            if d is not None and not (isinstance(d, dict) and all(isinstance(k, str) for k in d)):
                raise UserError(f"{label} must be a dict with string keys, got {d!r}.")
        entries = {src.name: src} if src.is_file() else _folder_files(src)
        if not entries:
            raise UserError(f"model folder {str(model_path)!r} is empty.")
        with workspace.pending("register", digests=[]) as note:      # a kill from here on is cleaned up later
            files = {}
            for rel, p in entries.items():                           # outside the lock: idempotent
                files[rel] = workspace.put_blob(p)
                note(digests=list(files.values()))
            with workspace.connect(immediate=True) as db:
                rec = records.ModelRecord(name=model_name, version=records.next_version(db, records.ModelRecord,
                                                                                        model_name),
                                          description=description, tags=dict(tags or {}),
                                          properties=dict(properties or {}), created_time=records.now(),
                                          files=files, kind="file" if src.is_file() else "folder")
                records.insert(db, rec)
        return cls.from_record(workspace, rec)

    @staticmethod
    def list(workspace, name=None, tags=None, properties=None, latest=False):
        """Models in the workspace, filtered by name, tags (keys or [key, value] pairs) and properties."""
        with workspace.connect() as db:
            recs = records.find(db, records.ModelRecord) if name is None else records.find(db, records.ModelRecord,
                                                                                          name=name)
        out = [Model.from_record(workspace, r) for r in recs]
        out = [m for m in out if matches_query(m.tags, tags) and matches_query(m.properties, properties)]
        if latest:
            newest = {m.name: m for m in out}
            out = list(newest.values())
        return out

    def delete(self):
        """Delete this version; refused while an image uses it (the message names the image)."""
        with self.workspace.connect(immediate=True) as db:
            users = records.users_of(db, records.ModelRecord(name=self.name, version=self.version))
            if users:
                names = ", ".join(f"{r.name} (version {r.version})" for r in users)
                raise UserError(f"model {self.id} is used by image {names}; delete the image first "
                                "(image.delete()), then the model.")
            records.delete(db, records.ModelRecord, name=self.name, version=self.version)
        shutil.rmtree(self.workspace.conversion_cache(self.name, self.version), ignore_errors=True)

    def update(self, tags=None, description=None, properties=None):
        """Add tags / properties (merged into what is recorded now) or replace the description."""
        with self.workspace.connect(immediate=True) as db:
            rec = records.get(db, records.ModelRecord, name=self.name, version=self.version)
            if rec is None:
                raise UserError(f"model {self.id} was deleted; register it again.")
            rec.tags = {**rec.tags, **(tags or {})}
            rec.properties = {**rec.properties, **(properties or {})}
            if description is not None:
                rec.description = description
            records.update(db, rec, "tags", "properties", "description")
        self._attach(self.workspace, rec)

    # -- files --------------------------------------------------------------------------------
    def download(self, target_dir=".", exist_ok=False) -> str:
        """Copy the model's files to ``target_dir``; return the path of the file or folder."""
        target = Path(target_dir)
        dest = target / next(iter(self.files)) if self.kind == "file" else target / self.name
        if dest.exists():
            if not exist_ok:
                raise UserError(f"{dest} exists; pass exist_ok=True to overwrite it.")
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        for rel, digest in self.files.items():
            out = target / rel if self.kind == "file" else dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            blob = self.workspace.blob_path(digest)
            if not blob.exists():
                raise UserError(f"blob {digest} of model {self.id} is missing from the workspace; "
                                "register the model again.")
            fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".tmp-")
            os.close(fd)
            shutil.copyfile(blob, tmp)
            os.replace(tmp, out)
        return str(dest)

    @property
    def converted_name(self) -> str:
        """The name its conversion is registered under ('<name>.<version>.accelonnx')."""
        return converted_name(self.name, self.version)

    @property
    def manifest(self):
        """The typed manifest of a converted model (``fpga.device.manifest.PackageManifest``); UserError otherwise."""
        return self._contract("PackageManifest", "convert it first with AccelOnnxConverter.convert_tf_model(...)")

    @property
    def timing(self) -> dict:
        """A converted model's timing on its device (modeled): every layer's cycles, batch-1 latency, throughput,
        bottleneck and the device preset used (``fpga.device.timing.analyze``)."""
        import json
        m = self.manifest
        if m.timing is None:
            raise UserError(f"model {self.id} has no timing report; convert it again with this accel_lib.")
        return json.loads(self.read_file(m.timing))

    @property
    def source_metadata(self):
        """The typed accel_model.json of a saved model (``manifest.SavedModelMetadata``); UserError otherwise."""
        return self._contract("SavedModelMetadata", "register a folder saved with model_graph.save(...)")

    def _contract(self, kind, remedy):
        from .fpga.device import manifest
        cls = getattr(manifest, kind)
        if cls.FILE not in self.files:
            raise UserError(f"model {self.id} has no {cls.FILE}: {remedy}.")
        try:
            return manifest.loads(cls, self.read_file(cls.FILE).decode(), f"{self.id}/{cls.FILE}")
        except manifest.ManifestError as e:
            raise UserError(str(e)) from None

    def read_file(self, rel: str) -> bytes:
        """The bytes of one file of the model."""
        if rel not in self.files:
            raise UserError(f"model {self.id} has no file {rel!r}; it has {sorted(self.files)}.")
        return self.workspace.blob_path(self.files[rel]).read_bytes()


def _folder_files(src: Path) -> dict:
    """Every file under a model folder, by its relative path; UserError for a link that leads out of the folder
    (registering copies what it points at)."""
    import os
    root = src.resolve()
    out = {}
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        for name in sorted(dirnames) + sorted(filenames):
            p = Path(dirpath) / name
            if p.is_symlink() and not p.resolve().is_relative_to(root):
                raise UserError(f"{p} is a link to {p.resolve()}, outside the model folder {src}: copy what it "
                                "points at into the folder, or remove the link.")
            if name in dirnames and p.is_symlink():
                dirnames.remove(name)                # a link to a folder inside: its files are walked there
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_file():
                out[p.relative_to(src).as_posix()] = p
    return dict(sorted(out.items()))


def matches_query(d, query):
    """Whether tags or properties ``d`` hold every query item: a key, or a [key, value] pair."""
    if not query:
        return True
    for q in query:
        if isinstance(q, (list, tuple)):
            k, v = q
            if d.get(k) != v:
                return False
        elif q not in d:
            return False
    return True
