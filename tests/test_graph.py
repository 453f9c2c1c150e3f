"""The dependency graph's rules (unknown names, cycles) and the order of a shutdown."""

from __future__ import annotations

import pytest

from pmd_init.model.graph import GraphError, check_graph, dependents_of, find_cycle, stop_waves
from pmd_init.model.spec import ProgramSpec


def spec(name: str, priority: int = 999, **depends: str) -> ProgramSpec:
    return ProgramSpec(name=name, command="x", priority=priority, depends_on=depends)


def test_a_good_graph_passes():
    check_graph([spec("db"), spec("api", db="healthy"), spec("worker", api="started")])


def test_an_unknown_name_is_refused_naming_the_dependent():
    with pytest.raises(GraphError, match="'api' depends on 'nope'") as info:
        check_graph([spec("api", nope="ready")])
    assert info.value.program == "api"


def test_a_cycle_is_listed():
    with pytest.raises(GraphError, match="cycle: a -> b -> c -> a"):
        check_graph([spec("a", b="ready"), spec("b", c="ready"), spec("c", a="started"),
                     spec("d", a="ready")])


def test_find_cycle_survives_a_long_chain():
    edges = {f"p{i}": [f"p{i + 1}"] for i in range(5000)}
    edges["p5000"] = []
    assert find_cycle(edges) is None
    edges["p5000"] = ["p0"]
    cycle = find_cycle(edges)
    assert cycle is not None and cycle[0] == cycle[-1] and len(cycle) == 5002


def test_dependents_of():
    specs = [spec("db"), spec("api", db="ready"), spec("jobs", db="started")]
    assert dependents_of(specs, "db") == ["api", "jobs"]
    assert dependents_of(specs, "api") == []


def test_stop_waves_reverse_the_graph_within_priority():
    # no dependencies: reverse priority, as before
    assert stop_waves([spec("a", 1), spec("b", 5), spec("c", 5)]) == [["b", "c"], ["a"]]
    # a dependent stops before what it depends on, even against priority
    specs = [spec("db", 1), spec("cache", 1), spec("api", 1, db="ready", cache="ready"),
             spec("worker", 1, api="started"), spec("other", 1)]
    assert stop_waves(specs) == [["other", "worker"], ["api"], ["cache", "db"]]
    assert stop_waves([spec("late", 900), spec("early", 10, late="ready")]) == \
        [["early"], ["late"]]


def test_programs_json_with_a_bad_graph_is_a_config_error():
    from pmd_init.store.programs import ConfigError, parse_programs

    with pytest.raises(ConfigError, match=r"programs\[0\]\.depends_on: .*cycle: a -> b -> a"):
        parse_programs([{"name": "a", "command": "x", "depends_on": ["b"]},
                        {"name": "b", "command": "x", "depends_on": ["a"]}])
    with pytest.raises(ConfigError, match=r"programs\[0\]\.depends_on: 'a' depends on 'z'"):
        parse_programs([{"name": "a", "command": "x", "depends_on": ["z"]}])
