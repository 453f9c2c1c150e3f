"""How the PM2-style process API shows programs: PM2's status names, its durations, the
process list entry, the detail view and its health check object."""

from __future__ import annotations

import shlex
import time
from typing import Any

from ..model.spec import ProgramSpec
from ..model.states import ProgramState
from ..supervisor.health import UNHEALTHY, UNKNOWN
from ..supervisor.instance import Instance, Slot
from ..supervisor.proctree import ProcessSampler
from ..supervisor.program import Program
from ..supervisor.supervisor import Supervisor

S = ProgramState


def pm2_status(state: ProgramState, expected_exit: bool = True) -> str:
    if state == S.RUNNING:
        return "online"
    if state in (S.STARTING, S.BACKOFF):
        return "launching"
    if state == S.STOPPING:
        return "stopping"
    if state == S.STOPPED or (state == S.EXITED and expected_exit):
        return "stopped"
    return "errored"


def instance_pm2_status(inst: Instance) -> str:
    return pm2_status(inst.state, inst.program.spec.expects_exit(inst.exit_code))


def program_pm2_status(program: Program) -> str:
    if program.waiting is not None:  # its start waits for its dependencies
        return "launching"
    statuses = [instance_pm2_status(i) for i in program.instances.values()]
    for candidate in ("online", "launching", "stopping", "errored"):
        if candidate in statuses:
            return candidate
    return "stopped"


def duration(seconds: float | None, with_seconds: bool = True) -> str:
    """2h 15m 30s (process uptime) or 5d 12h 30m (system uptime)."""
    total = int(seconds or 0)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m")]
    if with_seconds:
        parts.append((secs, "s"))
    shown = [f"{n}{unit}" for n, unit in parts if n]
    if not shown:
        return "0s" if with_seconds else "0m"
    return " ".join(shown)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def process_id(program: Slot) -> int | str | None:
    return program.temporary_id if program.is_ephemeral else program.id


def port_text(spec: ProgramSpec) -> str | None:
    if spec.port_range is not None:
        r = spec.port_range
        return str(r.start) if r.start == r.end else f"{r.start}-{r.end}"
    return spec.environment.get("PORT")


def health_summary(program: Program) -> str:
    """unhealthy if any instance is, healthy if all running ones are, else unknown."""
    if program.spec.health_check is None:
        return UNKNOWN
    statuses = [i.health_status for i in program.instances.values()
                if i.state == S.RUNNING]
    if not statuses:
        return UNKNOWN
    if UNHEALTHY in statuses:
        return UNHEALTHY
    if all(s == "healthy" for s in statuses):
        return "healthy"
    return UNKNOWN


def process_view(program: Program, sampler: ProcessSampler) -> dict[str, Any]:
    """One process of GET /api/processes."""
    instances = list(program.instances.values())
    running = [i for i in instances if i.pid is not None]
    cpu, memory = 0.0, 0
    for inst in running:
        sample = sampler.usage(inst.pid)  # type: ignore[arg-type]
        cpu += sample[0]
        memory += sample[1]
    uptimes = [u for u in (i.uptime() for i in instances) if u is not None]
    view: dict[str, Any] = {
        "id": process_id(program),
        "name": program.name,
        "status": program_pm2_status(program),
        "pid": running[0].pid if running else None,
        "port": port_text(program.spec),
        "cpu_usage": round(cpu, 1),
        "memory_usage": memory,
        "uptime": duration(max(uptimes) if uptimes else 0),
        "restarts": sum(i.restarts for i in instances),
        "health_status": health_summary(program),
    }
    waiting = program.waiting_for()
    if waiting is not None:
        view["waiting_for"], view["blocked"] = waiting
    if program.spec.port_range is not None:
        view["instances"] = [pm2_instance_view(i, sampler) for i in instances]
    return view


def pm2_instance_view(inst: Instance, sampler: ProcessSampler) -> dict[str, Any]:
    """One port's entry in `instances` of a port-range process."""
    cpu, memory = sampler.usage(inst.pid) if inst.pid is not None else (0.0, 0)
    return {
        "port": inst.port,
        "status": instance_pm2_status(inst),
        "pid": inst.pid,
        "cpu_usage": round(cpu, 1),
        "memory_usage": memory,
        "uptime": duration(inst.uptime()),
        "restarts": inst.restarts,
        "health_status": inst.health_status if inst.state == S.RUNNING else UNKNOWN,
    }


def script_and_args(command: str) -> tuple[str, list[str]]:
    try:
        argv = shlex.split(command)
    except ValueError:
        return command, []
    return (argv[0], argv[1:]) if argv else (command, [])


def detail_view(program: Program, sup: Supervisor) -> dict[str, Any]:
    """GET /api/processes/{id}: the list view plus config, health_check and logs."""
    spec = program.spec
    view = process_view(program, sup.sampler)
    view.pop("health_status")
    script, args = script_and_args(spec.command)
    env = dict(spec.environment)
    view["config"] = {
        "script": script,
        "args": args,
        "instances": len(program.instances),
        "max_memory_restart": spec.max_memory_restart,
        "port": port_text(spec),
        "env": env,
        "cwd": spec.directory,
        "user": spec.user,
        "autorestart": {"true": True, "false": False}.get(spec.autorestart, spec.autorestart),
    }
    if spec.env_file:
        view["config"]["env_file"] = list(spec.env_file)
    if spec.log_forward is not None:
        view["config"]["log_forward"] = spec.log_forward
    if spec.hooks:
        view["config"]["hooks"] = [hook.model_dump(mode="json") for hook in spec.hooks]
    view["config"].update(policies_view(program))
    view["health_check"] = health_view(program, sup)
    view["health_status"] = health_summary(program)
    primary = program.primary
    view["logs"] = {"out_file": primary.log_file("stdout"),
                    "error_file": primary.log_file("stderr")}
    if program.is_ephemeral:
        view["quick_start"] = {"temporary_id": program.temporary_id,
                               "created_at": iso(program.created_at),
                               "expires_at": iso(program.expires_at),
                               "finished_at": iso(program.finished_at)}
    return view


#: pmd's own fields of a program, shown in a process's `config` (`pmd show`) when set.
POLICY_FIELDS = ("sockets", "start_on", "idle_stop_after", "restart_delays", "max_age",
                 "max_age_jitter", "cron_restart", "watch", "on_fatal", "fatal_retry_after",
                 "rlimits")


def policies_view(program: Program) -> dict[str, Any]:
    """The sockets (with the fd each run gets), stop steps, restart and recycle policies,
    limits: only those the program sets, as programs.json has them."""
    stored = program.spec.to_json()
    view = {name: stored[name] for name in POLICY_FIELDS if name in stored}
    if "sockets" in view:
        view["sockets"] = [{**sock, "fd": 3 + index}
                           for index, sock in enumerate(view["sockets"])]
    if not isinstance(program.spec.stop_signal, str):
        view["stop_signal"] = stored["stop_signal"]
    return view


def health_view(program: Program, sup: Supervisor) -> dict[str, Any]:
    check = program.spec.health_check
    if check is None:
        return {"enabled": False, "check_type": None, "url": None, "status": UNKNOWN,
                "last_check": None, "response_time": None}
    states = [s for s in (sup.health.state_of(i) for i in program.instances.values())
              if s is not None]
    latest = max(states, key=lambda s: s.last_check or 0, default=None)
    view: dict[str, Any] = {
        "enabled": True,
        "check_type": check.type,
        "url": check.url,
        "status": health_summary(program),
        "last_check": iso(latest.last_check) if latest else None,
        "response_time": round(latest.response_time) if latest and
        latest.response_time is not None else None,
        "interval": check.interval,
        "timeout": check.timeout,
        "retries": check.retries,
        "restart_on_unhealthy": check.restart_on_unhealthy,
    }
    if check.type == "tcp":
        view["port"] = check.port
    if check.type == "script":
        view["command"] = check.command
    if latest is not None and latest.last_error:
        view["last_error"] = latest.last_error
    return view
