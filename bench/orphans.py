"""Run inside a fresh PID namespace, under the init being measured: make N double-forked
orphans and watch PID 1 reap them.

Each round forks a child that forks a grandchild and exits at once; the grandchild exits
too. We wait for the child ourselves, so after the loop every grandchild is a child of
PID 1: alive, a zombie, or already reaped. "Pending" is the number of PID 1's children
other than us; "zombies" the part of them in state Z. Both are read from /proc (the
namespace's own, thanks to --mount-proc).

Writes one JSON object to the result path:
  forks_s      first fork to last fork
  tail_s       last fork to no pending orphan (null if the cap ran out first)
  total_s      first fork to no pending orphan
  peak_zombies the most zombies seen in any sample (every --sample forks, then each poll)
  peak_at_s    when that peak was seen, from the first fork
  zombies_1ms  zombies at the first look 1 ms or more after the last fork (0 if none was
               pending before then)
  left         pending orphans when we stopped looking
"""

from __future__ import annotations

import argparse
import json
import os
import time


def init_children(me: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = os.listdir("/proc/1/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/1/task/{tid}/children", "rb") as f:
                kids.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return [k for k in kids if k != me]


def count(me: int) -> tuple[int, int]:
    """(pending orphans, zombies among them)"""
    kids = init_children(me)
    zombies = 0
    for pid in kids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        end = stat.rfind(b")")
        if stat[end + 2:end + 3] == b"Z":
            zombies += 1
    return len(kids), zombies


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--sample", type=int, default=50, help="count zombies every N forks")
    ap.add_argument("--cap", type=float, default=60.0, help="stop waiting after this long")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    me = os.getpid()
    peak = 0
    peak_at = 0.0
    start = time.monotonic()
    for i in range(args.count):
        pid = os.fork()
        if pid == 0:
            if os.fork() == 0:
                os._exit(0)
            os._exit(0)
        os.waitpid(pid, 0)
        if (i + 1) % args.sample == 0:
            zombies = count(me)[1]
            if zombies > peak:
                peak, peak_at = zombies, time.monotonic() - start
    last = time.monotonic()
    done = None
    pending = 0
    zombies_1ms = None
    while True:
        pending, zombies = count(me)
        now = time.monotonic()
        if zombies_1ms is None and (pending == 0 or now - last >= 0.001):
            zombies_1ms = zombies
        if zombies > peak:
            peak, peak_at = zombies, now - start
        if pending == 0:
            done = now
            break
        if now - last > args.cap:
            break
        # fine-grained at first (the good inits finish within a millisecond or two), then
        # coarse, so that a slow reaper is not also starved of CPU by our polling
        time.sleep(0.0002 if now - last < 0.1 else 0.005)
    result = {
        "count": args.count,
        "forks_s": last - start,
        "tail_s": None if done is None else done - last,
        "total_s": None if done is None else done - start,
        "peak_zombies": peak,
        "peak_at_s": peak_at,
        "zombies_1ms": zombies_1ms,
        "left": pending,
        "cap_s": args.cap,
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.rename(tmp, args.out)


if __name__ == "__main__":
    main()
