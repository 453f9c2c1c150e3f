"""pmd's capture alone: its Capture, LogFile and Forwarder in an asyncio loop of their own,
the bench's writer (`yes | head -c N` of 100-byte lines) on the other end of the pipe.

Without the rest of pmd (its API, its supervisor) and without a PID namespace, the figures
are the capture's own: CPU seconds of the reading process (CLOCK_PROCESS_CPUTIME_ID, not
clock ticks), MiB/s, how many reads and how many of them were full (a full read means the
writer had filled the pipe and waited for pmd), the reader's voluntary and involuntary
context switches, and the writer's CPU and context switches. Every run is a fresh process
(a fresh heap, as a fresh pmd has); the variants are interleaved, and the medians printed
with their range.

A variant is `forward:buffer:pipe_kib[:read_kib]`, e.g. `prefixed:mmap:1024` (pmd's
default), `off:bytearray:1024`, `prefixed:mmap:1024:256` (reads of 256 KiB from a pipe of
1 MiB). A pipe larger than /proc/sys/fs/pipe-max-size needs CAP_SYS_RESOURCE; without it
the pipe stays at 64 KiB, as pmd's would. --pin puts the reader on cpu 0 and the writer
on cpu 1, so that neither waits for the other's cpu: the throughput is then the reader's
CPU per MiB alone. The log file and the forwarded copy (a file standing for pmd's stdout)
go to --dir (default /dev/shm, as in bench/run.py).

Usage: python bench/capture_alone.py [--reps 8] [--mib 256] [--pin] VARIANT [VARIANT ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def child(variant: str, mib: int, folder: str, pin: bool) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from pmd_init.logs import capture

    forward, buffer_kind, pipe_kib, *read_kib = variant.split(":")
    capture.PIPE_SIZE = int(pipe_kib) << 10
    capture.READ_SIZE = int(read_kib[0] if read_kib else pipe_kib) << 10
    folder_path = Path(tempfile.mkdtemp(dir=folder))
    stdout = os.open(folder_path / "stdout", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(stdout, 1)
    os.close(stdout)
    loop = asyncio.new_event_loop()
    done: asyncio.Future[None] = loop.create_future()
    logfile = capture.LogFile(folder_path / "log", 2 << 30, 1)
    forwarder = capture.Forwarder(loop, 1) if forward != "off" else None
    buffer: capture.ReadBuffer = (capture.read_buffer() if buffer_kind == "mmap"
                                  else bytearray(capture.READ_SIZE))
    r, w = capture.Capture.make_pipe()
    sizes: list[int] = []
    readv = os.readv

    def counted_readv(fd: int, buffers: Any) -> int:
        n = readv(fd, buffers)
        sizes.append(n)
        return n

    capture.os.readv = counted_readv  # type: ignore[attr-defined]
    line = "x" * 99
    pin_writer = "taskset -c 1 " if pin else ""
    writer = subprocess.Popen(["sh", "-c", f"{pin_writer}yes {line} | {pin_writer}head -c "
                                           f"{mib * MiB}"], stdout=w)
    os.close(w)
    if pin:
        os.sched_setaffinity(0, {0})
    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, t0 = time.process_time(), time.perf_counter()
    capture.Capture(loop, r, logfile, forwarder, b"[writer] ", buffer=buffer,
                    on_eof=lambda _: done.set_result(None))
    loop.run_until_complete(done)
    cpu1, t1 = time.process_time(), time.perf_counter()
    after = resource.getrusage(resource.RUSAGE_SELF)
    writer.wait()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    logged = os.stat(folder_path / "log").st_size
    shutil.rmtree(folder_path, ignore_errors=True)
    if logged != mib * MiB:
        raise SystemExit(f"the log has {logged} of {mib * MiB} bytes")
    return {"cpu_s": cpu1 - cpu0, "mib_per_s": mib / (t1 - t0), "reads": len(sizes),
            "full_reads": sum(1 for n in sizes if n == capture.READ_SIZE),
            "voluntary_cs": after.ru_nvcsw - before.ru_nvcsw,
            "involuntary_cs": after.ru_nivcsw - before.ru_nivcsw,
            "minor_faults": after.ru_minflt - before.ru_minflt,
            "writer_cpu_s": children.ru_utime + children.ru_stime,
            "writer_cs": children.ru_nvcsw + children.ru_nivcsw}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="*", help="forward:buffer:pipe_kib[:read_kib]")
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--pin", action="store_true")
    ap.add_argument("--dir", default="/dev/shm")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    o = ap.parse_args()
    if o.child:
        print(json.dumps(child(o.child, o.mib, o.dir, o.pin)), file=sys.stderr)
        return
    if not o.variants:
        ap.error("name at least one variant, e.g. prefixed:mmap:1024")
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in o.variants}
    for _ in range(o.reps):
        for variant in o.variants:
            argv = [sys.executable, __file__, "--child", variant, "--mib", str(o.mib),
                    "--dir", o.dir] + (["--pin"] if o.pin else [])
            run = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True, check=True)
            results[variant].append(json.loads(run.stderr.strip().splitlines()[-1]))
    for variant, runs in results.items():
        def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(r[key] for r in runs)
        cpus = [r["cpu_s"] for r in runs]
        print(f"{variant:<22} cpu {med('cpu_s'):.3f} s [{min(cpus):.3f}-{max(cpus):.3f}]  "
              f"{med('mib_per_s'):5.0f} MiB/s  reads {med('reads'):.0f} "
              f"(full {med('full_reads'):.0f})  cs {med('voluntary_cs'):.0f}v "
              f"{med('involuntary_cs'):.0f}i  faults {med('minor_faults'):.0f}  "
              f"writer {med('writer_cpu_s'):.3f} s, cs {med('writer_cs'):.0f}")


if __name__ == "__main__":
    main()
