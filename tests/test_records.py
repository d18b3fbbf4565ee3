"""The records module: typed rows that map both ways, the shared queries, and the folder layout."""
import pytest

from accel_lib import records
from accel_lib.fpga.cluster import specs
from accel_lib.fpga.replica.limits import ServiceLimits


def test_each_record_maps_to_its_table_and_back(ws):
    cfg = specs.ServiceConfig(num_replicas=2, auth_enabled=True, tags={"a": "b"},
                                limits=ServiceLimits(max_message_mb=8))
    settled = specs.Settled(generation=7, runtime="container", engine="/usr/bin/podman", container_image="i:1")
    rows = [records.ModelRecord(name="m", version=1, tags={"t": "1"}, properties={}, created_time=records.now(),
                                files={"a.txt": "00" * 32}, kind="file"),
            records.ImageRecord(name="i", version=1, model_name="m", model_version=1, tags={}, properties={},
                                context="images/i/1", created_time=records.now()),
            records.ComputeRecord(name="c", vm_size="Standard_PB6s", location="eastus", created_time=records.now()),
            records.ServiceRecord(name="s", image_name="i", image_version=1, compute="c", config=cfg,
                                  keys=["k1", "k2"], created_time=records.now(), settled=settled),
            records.ReplicaRecord(service="s", idx=0, compute="c", fpga=0),
            records.OperationRecord(id="op1", log="operations/op1/log.txt", request={"source": "m:1"},
                                    created_time=records.now())]
    with ws.connect(immediate=True) as db:
        for r in rows:
            records.insert(db, r)
    with ws.connect() as db:
        for r in rows:
            assert records.get(db, type(r), **r.key) == r          # typed: dicts, lists and the ServiceConfig too
    with ws.connect() as db:
        svc = records.get(db, records.ServiceRecord, name="s")
    assert isinstance(svc.config, specs.ServiceConfig) and svc.config.limits.max_message_mb == 8
    assert svc.settled == settled


def test_versions_users_and_status(ws):
    with ws.connect(immediate=True) as db:
        assert records.next_version(db, records.ModelRecord, "m") == 1
        for v in (1, 2, 3):
            records.insert(db, records.ModelRecord(name="m", version=v, tags={}, properties={}, files={},
                                                   created_time=records.now()))
        records.insert(db, records.ImageRecord(name="i", version=1, model_name="m", model_version=2, tags={},
                                               properties={}, context="x", created_time=records.now()))
        assert records.latest(db, records.ModelRecord, "m").version == 3
        assert records.next_version(db, records.ModelRecord, "m") == 4
        assert records.versions(db, records.ModelRecord, "m") == [1, 2, 3]
        assert [i.name for i in records.users_of(db, records.ModelRecord(name="m", version=2))] == ["i"]
        assert records.users_of(db, records.ModelRecord(name="m", version=1)) == []
        key = {"name": "i", "version": 1}
        assert records.set_status(db, records.ImageRecord, key, "Failed", only_from=("Running",))
        assert not records.set_status(db, records.ImageRecord, key, "Succeeded", only_from=("Running",))
        assert records.get(db, records.ImageRecord, **key).creation_state == "Failed"
        assert records.delete(db, records.ModelRecord, name="m", version=1) == 1
        assert records.latest(db, records.ModelRecord, "nope") is None


def test_a_column_that_does_not_exist_is_refused(ws):
    with ws.connect() as db:
        with pytest.raises(ValueError, match="ModelRecord has no column"):
            records.find(db, records.ModelRecord, colour="red")
        with pytest.raises(ValueError, match="delete needs a condition"):
            records.delete(db, records.ModelRecord)


def test_the_layout_is_relative_to_the_workspace(ws):
    lay = ws.layout
    ctx = lay.image_context("img", 3)
    assert lay.relative(ctx) == "images/img/3" and lay.resolve("images/img/3") == ctx
    assert ws.service_folder("svc") == lay.service_logs("svc")
    assert lay.blob("ab" + "0" * 62).parent.parent == lay.blobs
    assert lay.operation_log("op").parent == lay.operation_dir("op") == lay.operation_work("op").parent
