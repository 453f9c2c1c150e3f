"""programs.json parsing and the atomic store, on real files."""

from __future__ import annotations

import errno
import json

import pytest

from pmd_init.model.spec import ProgramSpec
from pmd_init.store.files import (
    atomic_write_bytes,
    atomic_write_json,
    read_json,
    remove_stale_temps,
)
from pmd_init.store.programs import ConfigError, ProgramStore, parse_programs
from pmd_init.store.storage import Storage, StorageError
from tests.tmpfs import fill, remount, temp_files, tmpfs


def test_ids_are_assigned_after_the_highest_given():
    specs = parse_programs({"version": 1, "programs": [
        {"name": "a", "command": "x"}, {"id": 7, "name": "b", "command": "x"},
        {"name": "c", "command": "x"}]})
    assert [s.id for s in specs] == [8, 7, 9]


def test_programs_of_one_document_read_dump_and_copy_as_each_alone():
    """The specs of a document share what they hold alike (the fields given, the default
    containers): each still reads, dumps and copies as one validated on its own, and
    model_copy(update=...) of one changes no other's fields given."""
    items = [{"id": 1, "name": "a", "command": "x"}, {"id": 2, "name": "b", "command": "y"},
             {"id": 3, "name": "c", "command": "z", "environment": {"X": "1"},
              "exitcodes": [0, 2], "depends_on": ["a"]},
             {"name": "d", "command": "w"}, {"name": "e", "command": "v"}]
    together = parse_programs({"version": 1, "programs": items})
    for spec, item in zip(together, items, strict=True):
        alone = ProgramSpec.model_validate(item)
        if "id" not in item:
            alone = alone.model_copy(update={"id": spec.id})
        assert spec.model_dump() == alone.model_dump()
        assert spec.to_json() == alone.to_json()
        assert spec.model_fields_set == alone.model_fields_set
    a, b, c, d, e = together
    assert (a.environment, a.exitcodes, a.depends_on, a.env_file, a.hooks) == \
        ({}, [0], {}, [], [])
    assert (c.environment, c.exitcodes, c.depends_on) == ({"X": "1"}, [0, 2], {"a": "ready"})
    edited = a.model_copy(update={"description": "edited"})
    renamed = d.model_copy(update={"name": "f"})
    assert edited.description == "edited" and "description" in edited.model_fields_set
    assert renamed.name == "f"
    for spec in (a, b, d, e):
        assert "description" not in spec.model_fields_set
        assert spec.model_dump(exclude_unset=True).keys() == {"id", "name", "command"}
    assert (d.name, e.name) == ("d", "e")


@pytest.mark.parametrize("doc,message", [
    ({"version": 2, "programs": []}, "unsupported version"),
    ({"programs": {}}, "'programs' must be a list"),
    ({"programs": [{"name": "a", "command": "x"}, {"name": "a", "command": "y"}]},
     "duplicate program name"),
    ({"programs": [{"id": 1, "name": "a", "command": "x"}, {"id": 1, "name": "b",
                                                             "command": "y"}]},
     "duplicate program id"),
    ({"programs": [{"name": "a", "command": "x", "port_range": {"start": 10, "end": 20}},
                   {"name": "b", "command": "x", "port_range": {"start": 20, "end": 30}}]},
     "overlap"),
    ({"programs": [{"name": "a"}]}, r"programs\[0\].command"),
])
def test_bad_documents_are_refused_with_a_reason(doc, message):
    with pytest.raises(ConfigError, match=message):
        parse_programs(doc)


def test_adjacent_port_ranges_are_fine():
    parse_programs({"programs": [
        {"name": "a", "command": "x", "port_range": {"start": 10, "end": 19}},
        {"name": "b", "command": "x", "port_range": {"start": 20, "end": 30}}]})


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "f.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"b": 2})
    assert read_json(path) == {"b": 2}
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]


def test_store_falls_back_and_keeps_the_bad_file(tmp_path):
    config, state = tmp_path / "c", tmp_path / "s"
    config.mkdir()
    store = ProgramStore(config, state)
    (config / "programs.json").write_text(json.dumps(
        {"version": 1, "programs": [{"name": "good", "command": "x"}]}))
    assert [s.name for s in store.load()] == ["good"]
    assert (config / "programs.default.json").exists()
    (config / "programs.json").write_text("[{")
    assert [s.name for s in store.load()] == ["good"]
    assert store.report.source == "last-good"
    assert "not valid JSON" in (store.report.problem or "")
    assert (config / "programs.json").read_text() == "[{"
    assert len(list(config.glob("programs.json.bad-*"))) == 1


def test_missing_programs_json_boots_from_default(tmp_path):
    config = tmp_path / "c"
    config.mkdir()
    (config / "programs.default.json").write_text(json.dumps(
        {"version": 1, "programs": [{"name": "d", "command": "x"}]}))
    store = ProgramStore(config, tmp_path / "s")
    assert [s.name for s in store.load()] == ["d"]
    assert store.report.source == "default"


def test_a_failed_write_leaves_no_temp_file_and_the_old_content(tmp_path):
    with tmpfs(tmp_path / "disk") as disk:
        path = disk / "programs.json"
        atomic_write_json(path, {"old": True})
        fill(disk)
        before = sorted(p.name for p in disk.iterdir())
        with pytest.raises(OSError) as caught:
            atomic_write_bytes(path, b"x" * (32 << 10))
        assert caught.value.errno == errno.ENOSPC
        assert sorted(p.name for p in disk.iterdir()) == before
        assert temp_files(disk) == []
        assert read_json(path) == {"old": True}


def test_storage_names_the_dir_and_why_and_recovers_on_the_next_write(tmp_path):
    state = tmp_path / "state"
    with tmpfs(tmp_path / "config") as config:
        storage = Storage(config, state)
        path = config / "programs.json"
        storage.write_json(path, {"n": 1})
        filler = fill(config)
        with pytest.raises(StorageError) as caught:
            storage.write_bytes(path, b"x" * (32 << 10))
        assert caught.value.code == "STORAGE_FULL"
        assert str(config) in caught.value.message and "full" in caught.value.message
        view = storage.view()["config"]
        assert view["ok"] is False and view["code"] == "STORAGE_FULL"
        assert view["failures"] == 1 and view["last_error"]["file"] == "programs.json"
        assert storage.view()["state"]["ok"] is True and temp_files(config) == []

        filler.unlink()
        remount(config, "ro")
        try:
            with pytest.raises(StorageError) as caught:
                storage.write_json(path, {"n": 2})
            assert caught.value.code == "STORAGE_READ_ONLY"
            assert storage.view()["config"]["code"] == "STORAGE_READ_ONLY"
        finally:
            remount(config, "rw")
        storage.write_json(path, {"n": 3})
        view = storage.view()["config"]
        assert view["ok"] is True and view["code"] is None and view["error"] is None
        assert view["last_error"]["code"] == "STORAGE_READ_ONLY" and view["failures"] == 2
        assert read_json(path) == {"n": 3}


def test_a_small_write_that_fits_does_not_hide_a_full_dir(tmp_path):
    """pids.json's few bytes still fit where a quick-start's ephemeral.json did not: the
    state dir stays reported full until that file (or as much) is written again."""
    with tmpfs(tmp_path / "state") as state:
        storage = Storage(tmp_path / "config", state)
        big, small = state / "ephemeral.json", state / "pids.json"
        spare = state / "spare"
        spare.write_bytes(b"x" * (8 << 10))
        filler = fill(state)
        spare.unlink()  # room for a small file, not for a big one
        with pytest.raises(StorageError):
            storage.write_bytes(big, b"x" * (32 << 10))
        storage.write_bytes(small, b"{}")
        assert storage.view()["state"]["code"] == "STORAGE_FULL"
        filler.unlink()
        storage.write_bytes(big, b"x" * (32 << 10))
        assert storage.view()["state"]["ok"] is True


def test_only_pmds_own_temp_files_are_removed_at_start(tmp_path):
    names = [".programs.json.123.tmp", ".ephemeral.json.1.tmp", ".x.tmp",
             ".programs.json.abc.tmp", "programs.json", "notes.123.tmp", ".a.b.42.tmp"]
    for name in names:
        (tmp_path / name).write_text("x")
    (tmp_path / ".dir.7.tmp").mkdir()
    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == [".a.b.42.tmp", ".ephemeral.json.1.tmp",
                               ".programs.json.123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".dir.7.tmp", ".x.tmp", ".programs.json.abc.tmp", "programs.json", "notes.123.tmp"])


def test_records_do_not_write_what_the_file_already_says(tmp_path):
    """A shutdown with no quick-start used to sync an unchanged ephemeral.json: a third of
    the stop's time for 100 programs. The same bytes are written again only to make a
    write durable that was not."""
    from pmd_init.store.records import Records

    writes: list[bool] = []

    class Counting(Storage):
        def write_bytes(self, path, data, durable=True):
            writes.append(durable)
            super().write_bytes(path, data, durable=durable)

    records = Records(tmp_path, Counting(tmp_path, tmp_path))
    boot = {"boot_id": "b"}
    records.write_ephemeral(boot, [], durable=False)
    records.write_ephemeral(boot, [], durable=False)  # the same, not synced either
    assert writes == [False]
    records.write_ephemeral(boot, [], durable=True)  # asked to be durable: written, synced
    records.write_ephemeral(boot, [], durable=True)
    records.write_ephemeral(boot, [], durable=False)
    assert writes == [False, True]
    records.write_ephemeral({"boot_id": "c"}, [], durable=False)
    assert writes == [False, True, False]
    assert json.loads((tmp_path / "ephemeral.json").read_text())["boot"] == {"boot_id": "c"}
    records.write_pids(boot, [])
    records.write_pids(boot, [])
    assert writes == [False, True, False, False]
