"""What `GET /metrics` shows, read from pmd's own state at scrape time.

This module imports prometheus_client, which costs tens of milliseconds at import (its
exposition module pulls in http.server and wsgiref): metrics.py imports it on the first
scrape, never at start. Nothing polls: each scrape walks the configured programs, asks the
supervisor's sampler for their process groups (one /proc scan shared with the API for a
second), and reads counters that pmd keeps anyway. Counters come from counters that only
grow (an instance's restarts and log bytes, the reaper's orphans, webhook deliveries), so
a rate over them is right; a reload that replaces an instance starts its counters again,
which Prometheus reads as a counter reset.

Quick-start programs are left out: they come and go by the minute, and each would leave
series behind it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from .. import __version__
from ..model.states import ProgramState
from .context import Owner

STATES = tuple(ProgramState)
INSTANCE = ["program", "port"]
STREAM = ["program", "port", "stream"]


class PmdCollector:
    """A prometheus_client collector (it has `collect`) over one init's state."""

    def __init__(self, init: Owner) -> None:
        self.init = init

    def collect(self) -> Iterator[Metric]:
        sup = self.init.supervisor
        up = GaugeMetricFamily("pmd_program_up", "1 when the program is RUNNING", labels=INSTANCE)
        state = GaugeMetricFamily("pmd_program_state",
                                  "1 for the program's current state, 0 for the others",
                                  labels=["program", "port", "state"])
        ready = GaugeMetricFamily("pmd_program_ready",
                                  "1 when the program's current run is ready", labels=INSTANCE)
        restarts = CounterMetricFamily("pmd_program_restarts",
                                       "Automatic and requested restarts", labels=INSTANCE)
        start_time = GaugeMetricFamily("pmd_program_start_time_seconds",
                                       "When the latest run started, Unix time",
                                       labels=INSTANCE)
        exit_code = GaugeMetricFamily("pmd_program_last_exit_code",
                                      "Exit code of the latest run that ended (128+N for "
                                      "signal N)", labels=INSTANCE)
        cpu = CounterMetricFamily("pmd_program_cpu_seconds",
                                  "User and system CPU time of the processes in the "
                                  "program's process group now", labels=INSTANCE)
        memory = GaugeMetricFamily("pmd_program_memory_bytes",
                                   "Resident memory of the processes in the program's "
                                   "process group", labels=INSTANCE)
        log_bytes = CounterMetricFamily("pmd_log_bytes",
                                        "Bytes the program wrote to its stdout or stderr",
                                        labels=STREAM)
        log_dropped = CounterMetricFamily("pmd_log_dropped_bytes",
                                          "Bytes that could not be written to the program's "
                                          "log file (full disk, I/O error)", labels=STREAM)
        sampler = sup.sampler
        for program in sorted(sup.programs.values(), key=lambda p: p.name):
            for port, inst in program.instances.items():
                labels = [program.name, "" if port is None else str(port)]
                up.add_metric(labels, 1 if inst.state is ProgramState.RUNNING else 0)
                for value in STATES:
                    state.add_metric([*labels, value.value], 1 if inst.state is value else 0)
                ready.add_metric(labels, 1 if inst.ready_at is not None else 0)
                restarts.add_metric(labels, inst.restarts)
                if inst.started_at is not None:
                    start_time.add_metric(labels, inst.started_at)
                if inst.exit_code is not None:
                    exit_code.add_metric(labels, inst.exit_code)
                totals = sampler.totals(inst.pid) if inst.pid else None
                if totals is not None:
                    cpu.add_metric(labels, totals[0])
                    memory.add_metric(labels, totals[1])
                for stream, count in inst.log_bytes.items():
                    log_bytes.add_metric([*labels, stream], count.total)
                for stream, logfile in (("stdout", inst.stdout_log),
                                        ("stderr", inst.stderr_log)):
                    if logfile is not None:
                        log_dropped.add_metric([*labels, stream], logfile.dropped)
        yield from (up, state, ready, restarts, start_time, exit_code, cpu, memory,
                    log_bytes, log_dropped)

        forward = CounterMetricFamily("pmd_log_forward_dropped_bytes",
                                      "Program output that pmd's own stdout or stderr could "
                                      "not take (docker logs)", labels=["stream"])
        for stream, forwarder in zip(("stdout", "stderr"), sup.forwarders, strict=True):
            if forwarder is not None:
                forward.add_metric([stream], forwarder.dropped)
        yield forward
        yield CounterMetricFamily("pmd_orphans_reaped",
                                  "Processes that were not pmd's own programs, reaped",
                                  value=self.init.reaper.orphans_reaped)
        webhooks = sup.webhooks.counters()
        deliveries = CounterMetricFamily("pmd_webhook_deliveries",
                                         "Webhook deliveries by result", labels=["result"])
        for result in ("sent", "failed", "dropped"):
            deliveries.add_metric([result], webhooks[result])
        yield deliveries
        yield GaugeMetricFamily("pmd_webhook_deliveries_pending",
                                "Webhook deliveries waiting to be sent",
                                value=webhooks["pending"])
        shipped = CounterMetricFamily("pmd_log_target_lines",
                                      "Lines for each log target, by result: sent, or "
                                      "dropped (its buffer was full, or it refused them)",
                                      labels=["target", "result"])
        queued = GaugeMetricFamily("pmd_log_target_lines_queued",
                                   "Lines waiting for a log target", labels=["target"])
        if sup.shipping is not None:
            for shipper, _ in sup.shipping.shippers:
                name = shipper.target.name
                shipped.add_metric([name, "sent"], shipper.sent)
                shipped.add_metric([name, "dropped"], shipper.dropped)
                queued.add_metric([name], shipper.queued + shipper.in_flight)
        yield shipped
        yield queued
        info = GaugeMetricFamily("pmd_build_info", "pmd's version, 1",
                                 labels=["version", "python"])
        info.add_metric([__version__, ".".join(map(str, sys.version_info[:3]))], 1)
        yield info
        yield GaugeMetricFamily("pmd_programs", "Configured programs",
                                value=len(sup.programs))


def registry_for(init: Owner) -> CollectorRegistry:
    """The registry a scrape renders: pmd's collector and pmd's own process_* figures."""
    registry = CollectorRegistry()
    registry.register(PmdCollector(init))
    ProcessCollector(registry=registry)
    return registry
