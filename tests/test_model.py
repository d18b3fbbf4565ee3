import subprocess
import sys
import textwrap

import pytest

from accel_lib import Model, UserError


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "m"
    (d / "variables").mkdir(parents=True)
    (d / "saved_model.pb").write_bytes(b"graph")
    (d / "variables" / "v.data").write_bytes(b"\x00\x01" * 100)
    return d


def test_register_folder_versions_and_latest(ws, folder, tmp_path):
    m1 = Model.register(ws, folder, "resnet50", tags={"stage": "a"}, properties={"p": "1"}, description="first")
    m2 = Model.register(ws, folder, "resnet50", tags={"stage": "b"})
    assert (m1.version, m2.version) == (1, 2)
    assert Model(ws, "resnet50").version == 2 and Model(ws, name="resnet50", version=1).description == "first"
    assert Model(ws, id="resnet50:1").tags == {"stage": "a"}
    Model(ws, "resnet50", 1).download(tmp_path / "dl")
    assert sorted(p.name for p in (tmp_path / "dl" / "resnet50").rglob("*") if p.is_file()) == ["saved_model.pb",
                                                                                               "v.data"]
    assert (tmp_path / "dl" / "resnet50" / "variables" / "v.data").read_bytes() == b"\x00\x01" * 100


def test_register_single_file(ws, tmp_path):
    f = tmp_path / "weights.h5"
    f.write_bytes(b"abc")
    m = Model.register(ws, f, "weights")
    assert m.kind == "file" and m.read_file("weights.h5") == b"abc"


def test_list_filters_by_name_and_tags(ws, folder):
    Model.register(ws, folder, "a", tags={"team": "x"})
    Model.register(ws, folder, "a", tags={"team": "y"})
    Model.register(ws, folder, "b", tags={"team": "x", "gold": "1"})
    assert [m.id for m in Model.list(ws)] == ["a:1", "a:2", "b:1"]
    assert [m.id for m in Model.list(ws, name="a")] == ["a:1", "a:2"]
    assert [m.id for m in Model.list(ws, tags=[["team", "x"]])] == ["a:1", "b:1"]
    assert [m.id for m in Model.list(ws, tags=["gold"])] == ["b:1"]
    assert [m.id for m in Model.list(ws, latest=True)] == ["a:2", "b:1"]


@pytest.mark.parametrize("bad", ["ResNet50", "", "has space", "-leading", "a/b", "x" * 300])
def test_invalid_names_state_the_rule(ws, folder, bad):
    with pytest.raises(UserError, match="lowercase letters, digits"):
        Model.register(ws, folder, bad)
    assert Model.list(ws) == []


def test_uppercase_name_suggests_the_lowercase_one(ws, folder):
    with pytest.raises(UserError, match="try 'resnet50'"):
        Model.register(ws, folder, "Resnet50")


def test_missing_path_and_unknown_names_and_versions(ws, folder, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Model.register(ws, tmp_path / "nope", "x")
    with pytest.raises(UserError, match="no model named 'ghost'.*Model.register"):
        Model(ws, "ghost")
    Model.register(ws, folder, "real")
    with pytest.raises(UserError, match=r"has no version 7; it has versions \[1\]"):
        Model(ws, "real", version=7)


def test_delete_removes_one_version(ws, folder):
    Model.register(ws, folder, "a")
    Model.register(ws, folder, "a")
    Model(ws, "a", 2).delete()
    assert [m.id for m in Model.list(ws)] == ["a:1"]
    assert Model(ws, "a").version == 1


def test_two_processes_registering_the_same_name_lose_no_version(ws, folder):
    script = textwrap.dedent(f"""
        from accel_lib import Workspace, Model
        ws = Workspace({str(ws.path)!r})
        for i in range(15):
            Model.register(ws, {str(folder)!r}, "race", tags={{"writer": __import__("sys").argv[1]}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(k)]) for k in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    versions = sorted(m.version for m in Model.list(ws, name="race"))
    assert versions == list(range(1, 31))
    writers = [m.tags["writer"] for m in Model.list(ws, name="race")]
    assert writers.count("0") == 15 and writers.count("1") == 15
