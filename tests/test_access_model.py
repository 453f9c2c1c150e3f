"""identities.json's model: levels, each kind of identity, and how bad entries are left
out and named while the rest loads."""

from __future__ import annotations

import hashlib

import pytest

from pmd_init.model.access import Identities, Level, key_digest, parse_identities


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def test_levels_are_rungs_and_parse_only_in_lower_case():
    assert Level.OPEN < Level.METRICS < Level.READ < Level.OPERATE < Level.ADMIN
    assert Level.parse("operate") is Level.OPERATE
    for bad in ("Operate", "root", "", "OPEN"):
        with pytest.raises(ValueError, match="unknown level"):
            Level.parse(bad)


def test_each_kind_finds_its_identity():
    fingerprint = "ab" * 32
    ids = parse_identities({"version": 1, "default_level": "metrics", "identities": {
        "k": {"level": "read", "key_sha256": key_digest("secret")},
        "u": {"level": "operate", "local": {"uid": 1000}},
        "g": {"level": "read", "local": {"gid": 50}},
        "c": {"level": "admin", "cert": {"sha256": ":".join(["AB"] * 32)}},
        "n": {"level": "read", "cert": {"cn": "dash"}},
    }})
    assert ids.problems == () and ids.default_level is Level.METRICS
    assert ids.by_key("secret").name == "k"
    assert ids.by_key("Secret") is None
    assert ids.by_local(1000, 50).name == "u"  # the uid wins over the gid
    assert ids.by_local(1001, 50).name == "g"
    assert ids.by_local(1001, 51) is None
    assert ids.by_cert(fingerprint, "dash").name == "c"  # the fingerprint wins
    assert ids.by_cert("cd" * 32, "dash").name == "n"
    assert ids.by_cert("cd" * 32, None) is None
    assert ids.configured and ids.local_access


def test_bad_entries_are_left_out_and_named():
    ids = parse_identities({"identities": {
        "ok": {"level": "read", "key_sha256": digest("a")},
        "level": {"level": "superuser", "key_sha256": digest("b")},
        "open": {"level": "open", "key_sha256": digest("c")},
        "clear": {"level": "read", "key_sha256": "the-key-itself"},
        "none": {"level": "read"},
        "extra": {"level": "read", "key_sha256": digest("d"), "password": "x"},
        "local": {"level": "read", "local": {}},
        "bad name!": {"level": "read", "key_sha256": digest("e")},
    }, "default_level": "god"})
    assert [i.name for i in ids.entries] == ["ok"]
    text = "\n".join(ids.problems)
    for expected in ("level: level: unknown level 'superuser'", "open: level: ",
                     "clear: key_sha256: must be 64 lower-case hex digits",
                     "none: ", "give key_sha256, local or cert", "extra: password",
                     "local: ", "'bad name!'", "default_level: unknown level 'god'"):
        assert expected in text, expected
    assert ids.default_level is None and not ids.local_access


@pytest.mark.parametrize("doc", [[], "x", {"version": 2}, {"identities": []},
                                 {"identities": {}, "keys": {}}])
def test_a_document_that_is_not_identities_is_refused_whole(doc):
    with pytest.raises(ValueError):
        parse_identities(doc)


def test_no_identities_configure_nothing():
    assert not Identities().configured and not Identities().local_access
    assert not parse_identities({"version": 1}).configured
