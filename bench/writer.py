"""The capture-throughput program: wait for a go file, note the wall-clock start, then
exec a plain writer of N bytes on stdout (whatever the supervisor gave us as fd 1).

--source zero: `head -c N /dev/zero` (no newlines; what the headline figure uses)
--source lines: N bytes of 100-byte lines, for measuring pmd's line forwarding
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--go", required=True)
    ap.add_argument("--start", required=True)
    ap.add_argument("--bytes", type=int, required=True)
    ap.add_argument("--source", choices=("zero", "lines"), default="zero")
    args = ap.parse_args()
    while not os.path.exists(args.go):
        time.sleep(0.005)
    with open(args.start + ".tmp", "w") as f:
        f.write(repr(time.time()))
    os.rename(args.start + ".tmp", args.start)
    if args.source == "zero":
        os.execvp("head", ["head", "-c", str(args.bytes), "/dev/zero"])
    line = "x" * 99
    os.execvp("sh", ["sh", "-c", f"yes {line} | head -c {args.bytes}"])


if __name__ == "__main__":
    main()
