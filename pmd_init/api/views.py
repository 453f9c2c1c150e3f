"""Serialized views of supervisor objects, built from in-memory state only (/proc is read
only when stats are asked for)."""

from __future__ import annotations

import time
from typing import Any

from ..model.states import ProgramState
from ..supervisor.expansion import expansion_view
from ..supervisor.instance import Instance
from ..supervisor.proctree import ProcessSampler
from ..supervisor.program import Program


def hms(seconds: float | None) -> str | None:
    """uptime as the daemon API shows it: H:MM:SS."""
    if seconds is None:
        return None
    total = int(seconds)
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def instance_status(inst: Instance) -> dict[str, Any]:
    view: dict[str, Any] = {"status": inst.state.value}
    if inst.port is not None:
        view["port"] = inst.port
    if inst.pid is not None:
        view["pid"] = inst.pid
    uptime = inst.uptime()
    if uptime is not None:
        view["uptime"] = hms(uptime)
    if inst.exit_code is not None:
        view["exit_code"] = inst.exit_code
    if inst.completed is not None:  # a oneshot's run ended: did it succeed?
        view["completed"] = inst.completed
    if inst.ready_at is not None:
        view["ready"] = True
        view["ready_at"] = iso(inst.ready_at)
    elif inst.program.spec.readiness is not None and inst.pid is not None:
        view["ready"] = False
    if inst.notify_status is not None:  # the program's own STATUS= text (notify)
        view["notify_status"] = inst.notify_status
    if inst.notify_stopping:
        view["notify_stopping"] = True
    if inst.spawn_error:
        view["spawn_error"] = inst.spawn_error
    expanded = expansion_view(inst.program.spec, inst.rt.base_env)
    if expanded is not None:  # the fields' ${VAR}s as they expand (the spec keeps the text)
        view["expanded"] = expanded
    if inst.retry_at is not None:  # BACKOFF: when the next attempt comes, and why it waits
        view["retry_at"] = iso(inst.retry_at)
        view["backoff_reason"] = inst.backoff_reason
    elif inst.backoff_reason is not None and inst.state == ProgramState.FATAL:
        view["backoff_reason"] = inst.backoff_reason  # why its starts failed
    dropped = sum(f.dropped for f in (inst.stdout_log, inst.stderr_log) if f is not None)
    if dropped:
        view["log_dropped_bytes"] = dropped  # a full or failing disk, reported not hidden
    view["restarts"] = inst.restarts
    view["since"] = iso(inst.state_since)
    return view


def instance_view(inst: Instance) -> dict[str, Any]:
    """The `instance` object of a start or restart answer, in the extras page's shape: the
    status object's port, status, pid and uptime, each present even when null, and the
    instance's name. Built from `instance_status` so that the two never disagree."""
    status = instance_status(inst)
    return {"port": inst.port, "instance_name": inst.name, "status": status["status"],
            "pid": status.get("pid"), "uptime": status.get("uptime")}


def program_status(program: Program) -> dict[str, Any]:
    """One program's status object: flat for a single instance, the port-range form
    (daemon-api-extras.md) for a port-range program."""
    if program.spec.port_range is None:
        return {"id": program.id, **instance_status(program.primary),
                **waiting_view(program)}
    instances = [instance_status(i) for i in program.instances.values()]
    return {
        "id": program.id,
        "type": "port-range",
        "status": program.state.value,
        "running_instances": sum(1 for i in program.instances.values()
                                 if i.state.value == "RUNNING"),
        "total_instances": len(instances),
        "instances": instances,
        **waiting_view(program),
    }


def waiting_view(program: Program) -> dict[str, Any]:
    """`waiting_for` (and `blocked`, with its reason) while a start waits for the
    program's dependencies; nothing otherwise."""
    waiting = program.waiting_for()
    if waiting is None:
        return {}
    names, blocked = waiting
    return {"waiting_for": names, "blocked": blocked}


def stats_view(inst: Instance, sampler: ProcessSampler) -> dict[str, Any] | None:
    """The stats object of the extras page (include_stats), or None when nothing runs: the
    instance's process group, as supervisor/proctree.py defines a program's processes."""
    if inst.pid is None:
        return None
    group = sampler.group(inst.pid)
    if group is None:
        return None
    # The total is the sum of the shown parts, so that they add up for a reader.
    cpu = [round(p.cpu_percent, 1) for p in group.processes]
    return {
        "pid": inst.pid,
        "started_at": iso(inst.started_at),
        "cpu_percent": round(sum(cpu), 1),
        "memory_rss_bytes": group.rss,
        "process_count": len(group.processes),
        "processes": [{"pid": p.pid, "name": p.name, "cpu_percent": percent,
                       "memory_rss_bytes": p.rss}
                      for p, percent in zip(group.processes, cpu, strict=True)],
    }
