"""What `GET /metrics` shows, read from pmd's own state at scrape time, and its rendering.

This module imports prometheus_client, which costs tens of milliseconds at import (its
exposition module pulls in http.server and wsgiref): metrics.py imports it on the first
scrape, never at start. prometheus_client chooses the format from the scraper's Accept and
collects pmd's own process_* figures; pmd writes the text itself. Its generic encoder
formats and escapes every label of every sample again (with 100 programs, about 1,800
samples: 8 ms in the text format, 11 ms in OpenMetrics, most of a scrape); here each
instance's labels are written once and reused by every family, which takes about a tenth
of that.

Nothing polls: each scrape walks the configured programs, asks the supervisor's sampler
for their process groups (one /proc scan shared with the API for a second), and reads
counters that pmd keeps anyway. Counters come from counters that only grow (an instance's
restarts and log bytes, the reaper's orphans, webhook deliveries), so a rate over them is
right; a reload that replaces an instance starts its counters again, which Prometheus
reads as a counter reset.

Quick-start programs are left out: they come and go by the minute, and each would leave
series behind it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client.process_collector import ProcessCollector

from .. import __version__
from ..model.states import ProgramState
from .context import Owner

STATES = tuple(ProgramState)
TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def label_value(value: str) -> str:
    """A label value as both formats quote it: backslash, double quote, newline escaped."""
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def number(value: float) -> str:
    """A sample value as Prometheus' parsers read it (Go's spellings of the specials)."""
    if isinstance(value, int):
        return str(int(value))  # a bool too: "1", never "True"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class Family:
    """One metric family: its samples as (labels already written, value)."""

    __slots__ = ("name", "kind", "help", "samples")

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.kind = kind  # "gauge" or "counter"
        self.help = help_text
        self.samples: list[tuple[str, float]] = []

    def add(self, labels: str, value: float) -> None:
        self.samples.append((labels, value))


def render(families: Iterable[Family], openmetrics: bool) -> bytes:
    """The text exposition format 0.0.4, or OpenMetrics 1.0. They differ in three places:
    a counter's HELP and TYPE name its samples' `_total` name in the text format and the
    family's name in OpenMetrics; OpenMetrics ends with `# EOF`."""
    out: list[str] = []
    for family in families:
        sample = family.name + "_total" if family.kind == "counter" else family.name
        head = family.name if openmetrics else sample
        help_text = family.help.replace("\\", "\\\\").replace("\n", "\\n")
        if openmetrics:
            help_text = help_text.replace('"', '\\"')
        out.append(f"# HELP {head} {help_text}\n# TYPE {head} {family.kind}\n")
        out.extend(f"{sample}{{{labels}}} {number(value)}\n" if labels else
                   f"{sample} {number(value)}\n" for labels, value in family.samples)
    if openmetrics:
        out.append("# EOF\n")
    return "".join(out).encode()


class PmdCollector:
    """The families of one init's programs and of pmd itself, read afresh at each call."""

    def __init__(self, init: Owner, auth_failures: Mapping[str, int] | None = None) -> None:
        self.init = init
        #: access.py's refusals by reason, kept by the app's AccessControl.
        self.auth_failures = auth_failures
        # prometheus_client's reader of /proc/self: the process_* every client reports.
        self.process = ProcessCollector(registry=None)

    def collect(self) -> Iterator[Family]:
        sup = self.init.supervisor
        up = Family("pmd_program_up", "gauge", "1 when the program is RUNNING")
        state = Family("pmd_program_state", "gauge",
                       "1 for the program's current state, 0 for the others")
        ready = Family("pmd_program_ready", "gauge",
                       "1 when the program's current run is ready")
        restarts = Family("pmd_program_restarts", "counter",
                          "Automatic and requested restarts")
        start_time = Family("pmd_program_start_time_seconds", "gauge",
                            "When the latest run started, Unix time")
        exit_code = Family("pmd_program_last_exit_code", "gauge",
                           "Exit code of the latest run that ended (128+N for signal N)")
        cpu = Family("pmd_program_cpu_seconds", "counter",
                     "User and system CPU time of the processes in the program's process "
                     "group now")
        memory = Family("pmd_program_memory_bytes", "gauge",
                        "Resident memory of the processes in the program's process group")
        log_bytes = Family("pmd_log_bytes", "counter",
                           "Bytes the program wrote to its stdout or stderr")
        log_dropped = Family("pmd_log_dropped_bytes", "counter",
                             "Bytes that could not be written to the program's log file "
                             "(full disk, I/O error)")
        sampler = sup.sampler
        for program in sorted(sup.programs.values(), key=lambda p: p.name):
            name = label_value(program.name)
            for port, inst in program.instances.items():
                labels = f'program="{name}",port="{"" if port is None else port}"'
                current = inst.state
                up.add(labels, 1 if current is ProgramState.RUNNING else 0)
                for value in STATES:
                    state.add(f'{labels},state="{value.value}"', 1 if current is value else 0)
                ready.add(labels, 1 if inst.ready_at is not None else 0)
                restarts.add(labels, inst.restarts)
                if inst.started_at is not None:
                    start_time.add(labels, inst.started_at)
                if inst.exit_code is not None:
                    exit_code.add(labels, inst.exit_code)
                totals = sampler.totals(inst.pid) if inst.pid else None
                if totals is not None:
                    cpu.add(labels, totals[0])
                    memory.add(labels, totals[1])
                for stream, count in inst.log_bytes.items():
                    log_bytes.add(f'{labels},stream="{stream}"', count.total)
                for stream, logfile in (("stdout", inst.stdout_log),
                                        ("stderr", inst.stderr_log)):
                    if logfile is not None:
                        log_dropped.add(f'{labels},stream="{stream}"', logfile.dropped)
        yield from (up, state, ready, restarts, start_time, exit_code, cpu, memory,
                    log_bytes, log_dropped)

        forward = Family("pmd_log_forward_dropped_bytes", "counter",
                         "Program output that pmd's own stdout or stderr could not take "
                         "(docker logs)")
        for stream, forwarder in zip(("stdout", "stderr"), sup.forwarders, strict=True):
            if forwarder is not None:
                forward.add(f'stream="{stream}"', forwarder.dropped)
        yield forward
        orphans = Family("pmd_orphans_reaped", "counter",
                         "Processes that were not pmd's own programs, reaped")
        orphans.add("", self.init.reaper.orphans_reaped)
        yield orphans
        webhooks = sup.webhooks.counters()
        deliveries = Family("pmd_webhook_deliveries", "counter",
                            "Webhook deliveries by result")
        for result in ("sent", "failed", "dropped"):
            deliveries.add(f'result="{result}"', webhooks[result])
        yield deliveries
        hooks = sup.hooks.counters()
        runs = Family("pmd_hook_runs", "counter", "Local event hook runs by result")
        for result in ("ok", "failed", "timeout", "dropped", "error"):
            runs.add(f'result="{result}"', hooks[result])
        yield runs
        pending = Family("pmd_webhook_deliveries_pending", "gauge",
                         "Webhook deliveries waiting to be sent")
        pending.add("", webhooks["pending"])
        yield pending
        shipped = Family("pmd_log_target_lines", "counter",
                         "Lines for each log target, by result: sent, or dropped (its "
                         "buffer was full, or it refused them)")
        queued = Family("pmd_log_target_lines_queued", "gauge",
                        "Lines waiting for a log target")
        if sup.shipping is not None:
            for shipper, _ in sup.shipping.shippers:
                target = f'target="{label_value(shipper.target.name)}"'
                shipped.add(f'{target},result="sent"', shipper.sent)
                shipped.add(f'{target},result="dropped"', shipper.dropped)
                queued.add(target, shipper.queued + shipper.in_flight)
        yield shipped
        yield queued
        info = Family("pmd_build_info", "gauge", "pmd's version, 1")
        python = ".".join(map(str, sys.version_info[:3]))
        info.add(f'version="{label_value(__version__)}",python="{python}"', 1)
        yield info
        programs = Family("pmd_programs", "gauge", "Configured programs")
        programs.add("", len(sup.programs))
        yield programs
        if self.auth_failures is not None:
            refused = Family("pmd_api_auth_failures", "counter",
                             "API requests refused by access control, by reason: missing or "
                             "invalid key (401), forbidden (403), blocked (429)")
            for reason, times in self.auth_failures.items():
                refused.add(f'reason="{label_value(reason)}"', times)
            yield refused
        yield from self._process()

    def _process(self) -> Iterator[Family]:
        # ProcessCollector's families carry no labels; a counter's one sample is its
        # `_total`.
        for metric in self.process.collect():
            family = Family(metric.name, metric.type, metric.documentation)
            for sample in metric.samples:
                if sample.name in (metric.name, metric.name + "_total"):
                    family.add("", sample.value)
            yield family

    def scrape(self, openmetrics: bool) -> bytes:
        return render(self.collect(), openmetrics)
