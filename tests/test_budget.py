"""The shutdown's worst case against the orchestrator's budget (model/budget.py)."""

from __future__ import annotations

from pmd_init.model.budget import EXIT_MARGIN, plan_shutdown, share
from pmd_init.model.spec import ProgramSpec


def spec(name: str, priority: int, stop_timeout: float, **fields: object) -> ProgramSpec:
    return ProgramSpec.model_validate({"name": name, "command": "sleep 1", "user": "root",
                                       "priority": priority, "stop_timeout": stop_timeout,
                                       **fields})


def test_the_worst_case_is_the_sum_of_each_stop_group_longest_timeout():
    specs = [spec("web", 100, 3), spec("api", 100, 5), spec("worker", 200, 2),
             spec("db", 50, 10)]
    plan = plan_shutdown(specs, delay=0, grace=30, termination_grace=None)
    assert [(w.names, w.seconds, w.longest) for w in plan.waves] == [
        (("worker",), 2.0, "worker"), (("api", "web"), 5.0, "api"), (("db",), 10.0, "db")]
    assert plan.worst_case == 17.0
    assert plan.budget == 30 and plan.problem is None


def test_dependents_stop_first_and_count_as_their_own_group():
    specs = [spec("db", 100, 4), spec("app", 100, 6, depends_on=["db"])]
    plan = plan_shutdown(specs, delay=0, grace=30, termination_grace=None)
    assert [w.names for w in plan.waves] == [("app",), ("db",)]
    assert plan.worst_case == 10.0


def test_a_termination_grace_too_small_is_a_problem_naming_the_programs():
    specs = [spec("front", 200, 10), spec("back", 100, 10)]
    plan = plan_shutdown(specs, delay=5, grace=30, termination_grace=20)
    assert plan.budget == 20 - 5 - EXIT_MARGIN
    assert plan.problem is not None
    assert "front 10 s + back 10 s" in plan.problem and "termination grace of 20 s" in \
        plan.problem
    fits = plan_shutdown(specs, delay=5, grace=30, termination_grace=26)
    assert fits.budget == 20 and fits.problem is None
    # Without the orchestrator's figure, --grace caps the shutdown as it always did.
    assert plan_shutdown(specs, delay=0, grace=8, termination_grace=None).problem is None
    tight = plan_shutdown(specs, delay=0, grace=8, termination_grace=30)
    assert tight.budget == 8 and "--grace is 8 s" in (tight.problem or "")
    assert plan.as_dict()["worst_case_seconds"] == 20.0


def test_shares_keep_every_later_group_in_the_budget():
    assert share(10, 3, 8) == 10  # everything fits: wait until done
    assert share(3, 10, 20) == 1.5  # half the worst case, half of what is left
    assert share(1.5, 10, 10) == 1.5
    assert share(0, 10, 10) == 0.0
    assert share(-1, 5, 5) == 0.0
