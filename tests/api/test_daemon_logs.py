"""Logs: tails that continue into rotated files, and the SSE stream (byte cursor,
Last-Event-ID, rotation while following and under a reconnecting cursor)."""

from __future__ import annotations

import json
import os

import httpx

from tests.api.helpers import API, assert_error, program, wait_until

WRITER = """\
import sys, time
n, pad, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
for i in range(n):
    # one line a write: pipe writes under PIPE_BUF arrive whole, so rotation (which
    # happens between reads) never cuts a line
    print("line %03d " % i + "x" * pad, flush=True)
    time.sleep(pause)
time.sleep(30)
"""


def start_writer(pmd, http, name: str, n: int, pad: int = 20, pause: float = 0.0,  # noqa: ANN001
                 **fields: object) -> int:
    script = pmd.base / "writer.py"
    script.write_text(WRITER)
    body = program(name, f"python3 -u {script} {n} {pad} {pause}", **fields)
    response = http.post(f"{API}/programs/add", json=body)
    assert response.status_code == 200, response.text
    i = response.json()["id"]
    assert http.post(f"{API}/programs/{i}/start", json={"wait": True}).status_code == 200
    return i


def expected_line(i: int, pad: int = 20) -> str:
    return f"line {i:03d} " + "x" * pad


def read_events(client: httpx.Client, path: str, until, headers=None, params=None,  # noqa: ANN001
                limit: int = 10000) -> list[dict]:
    """Parse SSE events until `until(events)` is true."""
    events: list[dict] = []
    current: dict = {}
    with client.stream("GET", path, headers=headers or {}, params=params or {},
                       timeout=httpx.Timeout(10.0)) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line == "":
                if "data" in current:  # as EventSource does: no data, no event
                    events.append(current)
                    if until(events) or len(events) >= limit:
                        break
                current = {}
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "data":
                current["data"] = current["data"] + "\n" + value if "data" in current else value
            else:
                current[key] = value
    return events


def text_of(events: list[dict]) -> list[str]:
    lines: list[str] = []
    for event in events:
        if event.get("event") is None and "data" in event:
            lines += event["data"].split("\n")
    return lines


def test_tail_continues_into_rotated_files(pmd, http):
    i = start_writer(pmd, http, "rotating", 200, log_max_bytes=1500, log_backups=4)
    log = pmd.log_dir / "rotating" / "stdout.log"
    wait_until(lambda: expected_line(199) in log.read_text(), what="all lines written")
    current = log.read_text().splitlines()
    assert len(current) < 150 and (log.parent / "stdout.log.1").exists()
    body = http.get(f"{API}/programs/{i}/logs", params={"lines": 150}).json()
    assert body["success"] is True and body["type"] == "stdout" and body["lines"] == 150
    assert body["log_file"] == str(log)
    assert body["logs"].split("\n") == [expected_line(n) for n in range(50, 200)]
    assert http.get(f"{API}/programs/{i}/logs", params={"lines": 3}).json()["logs"] == \
        "\n".join(expected_line(n) for n in (197, 198, 199))
    assert http.get(f"{API}/programs/{i}/logs", params={"lines": 0}).json()["logs"] == ""
    capped = http.get(f"{API}/programs/{i}/logs", params={"lines": 20000}).json()
    assert capped["lines"] == 10000
    kept = capped["logs"].split("\n")
    assert kept[-1] == expected_line(199) and len(kept) == len(set(kept))
    assert http.get(f"{API}/programs/{i}/logs", params={"type": "stderr"}).json()["logs"] == ""
    assert_error(http.get(f"{API}/programs/{i}/logs", params={"type": "both"}), 400,
                 "VALIDATION_ERROR", "type")
    assert_error(http.get(f"{API}/programs/{i}/logs", params={"lines": -1}), 400,
                 "VALIDATION_ERROR", "lines")


def test_logs_of_a_program_without_log_files(http):
    i = http.post(f"{API}/programs/add",
                  json=program("silent", logs_enabled=False)).json()["id"]
    assert_error(http.get(f"{API}/programs/{i}/logs"), 400, "LOGS_DISABLED", "logs_enabled")
    assert_error(http.get(f"{API}/programs/{i}/logs/stream"), 400, "LOGS_DISABLED",
                 "logs_enabled")


def test_custom_log_file_and_stderr(pmd, http):
    out = pmd.base / "custom" / "app.out"
    i = http.post(f"{API}/programs/add", json=program(
        "custom-logs", "sh -c 'echo to-out; echo to-err >&2; exec sleep 30'",
        stdout_logfile=str(out))).json()["id"]
    http.post(f"{API}/programs/{i}/start", json={"wait": True})
    wait_until(lambda: out.exists() and out.read_text() == "to-out\n", what="custom log")
    body = http.get(f"{API}/programs/{i}/logs").json()
    assert body["logs"] == "to-out" and body["log_file"] == str(out)
    err = wait_until(lambda: http.get(f"{API}/programs/{i}/logs",
                                      params={"type": "stderr"}).json()["logs"] == "to-err")
    assert err


def test_stream_follows_live_output_across_rotations(pmd, http):
    i = start_writer(pmd, http, "streamed", 60, pad=40, pause=0.03, log_max_bytes=800,
                     log_backups=2)
    last = expected_line(59, 40)
    events = read_events(http, f"{API}/programs/{i}/logs/stream",
                         until=lambda ev: last in text_of(ev), params={"offset": 0})
    assert text_of(events) == [expected_line(n, 40) for n in range(60)]
    resets = [e for e in events if e.get("event") == "reset"]
    assert resets, "the file rotated while we followed it"
    assert json.loads(resets[0]["data"])["reason"] == "rotated"
    assert all(e["id"] == "0" for e in resets)
    # ids are byte offsets into the file being followed
    last_reset = max(n for n, e in enumerate(events) if e.get("event") == "reset")
    after_last_reset = events[last_reset + 1:]
    data = "".join(e["data"] + "\n" for e in after_last_reset if e.get("event") is None)
    assert int(after_last_reset[-1]["id"]) == len(data.encode())


def test_stream_resumes_from_last_event_id(pmd, http):
    i = http.post(f"{API}/programs/add", json=program(
        "resumable", "sh -c 'for i in 0 1 2 3 4 5 6 7 8 9; do echo l$i; done; exec sleep 30'"
    )).json()["id"]
    http.post(f"{API}/programs/{i}/start", json={"wait": True})
    log = pmd.log_dir / "resumable" / "stdout.log"
    wait_until(lambda: log.exists() and log.read_text().endswith("l9\n"))
    url = f"{API}/programs/{i}/logs/stream"
    offset = len(b"l0\nl1\nl2\nl3\nl4\n")
    for kwargs in ({"headers": {"Last-Event-ID": str(offset)}},
                   {"params": {"offset": offset}}):
        events = read_events(http, url, until=lambda ev: "l9" in text_of(ev), **kwargs)
        assert text_of(events) == ["l5", "l6", "l7", "l8", "l9"]
        assert events[-1]["id"] == str(log.stat().st_size)
    # no cursor: the last `lines` lines, then live output
    events = read_events(http, url, until=lambda ev: "l9" in text_of(ev),
                         params={"lines": 2})
    assert text_of(events) == ["l8", "l9"]
    assert_error(http.get(url, headers={"Last-Event-ID": "abc"}), 400, "VALIDATION_ERROR",
                 "Last-Event-ID")
    assert_error(http.get(url, params={"offset": -5}), 400, "VALIDATION_ERROR", "offset")
    assert_error(http.get(f"{API}/programs/999999/logs/stream"), 404, "NOT_FOUND")


def test_stream_cursor_past_a_rotation(pmd, http):
    i = start_writer(pmd, http, "rotated-under", 100, log_max_bytes=500, log_backups=2)
    log = pmd.log_dir / "rotated-under" / "stdout.log"
    wait_until(lambda: expected_line(99) in log.read_text(), what="all lines written")
    current = log.read_bytes()
    older = (log.parent / "stdout.log.1").read_bytes()
    cursor = len(current) + 3 * len(expected_line(0)) + 3  # a line boundary in .1
    assert cursor < len(older)
    events = read_events(http, f"{API}/programs/{i}/logs/stream",
                         until=lambda ev: expected_line(99) in text_of(ev),
                         headers={"Last-Event-ID": str(cursor)})
    kinds = [e.get("event", "message") for e in events]
    assert "reset" in kinds
    before_reset = events[: kinds.index("reset")]
    assert "".join(e["data"] + "\n" for e in before_reset) == older[cursor:].decode()
    assert text_of(events[kinds.index("reset"):]) == current.decode().splitlines()


def test_stream_starts_with_a_tail_across_a_rotation(pmd, http):
    i = start_writer(pmd, http, "tail-streamed", 60, log_max_bytes=500, log_backups=2)
    log = pmd.log_dir / "tail-streamed" / "stdout.log"
    wait_until(lambda: expected_line(59) in log.read_text(), what="all lines written")
    current = log.read_text().splitlines()
    assert 0 < len(current) < 15
    events = read_events(http, f"{API}/programs/{i}/logs/stream",
                         until=lambda ev: expected_line(59) in text_of(ev),
                         params={"lines": 15})
    assert text_of(events) == [expected_line(n) for n in range(45, 60)]
    # the lines of stdout.log.1 leave the cursor at the start of the current file
    older = [e for e in events if e["id"] == "0"]
    assert sum(len(e["data"].split("\n")) for e in older) == 15 - len(current)
    assert events[-1]["id"] == str(log.stat().st_size)

def test_stream_ends_when_the_program_is_removed(http):
    i = http.post(f"{API}/programs/add", json=program(
        "vanishing", "sh -c 'echo hello; exec sleep 30'")).json()["id"]
    http.post(f"{API}/programs/{i}/start", json={"wait": True})
    removed = []
    with httpx.Client(base_url=str(http.base_url)) as other:

        def remove_after_hello(events: list[dict]) -> bool:
            if "hello" in text_of(events) and not removed:
                removed.append(other.post(f"{API}/programs/remove/{i}").json())
            return any(e.get("event") == "end" for e in events)

        events = read_events(http, f"{API}/programs/{i}/logs/stream", until=remove_after_hello)
    assert removed == [{"success": True, "id": i}]
    assert events[-1]["event"] == "end"


def test_streams_end_when_pmd_shuts_down(tmp_path):
    from tests.harness import Pmd

    with Pmd(tmp_path, [program("chatty", "sh -c 'echo up; exec sleep 30'", boot=True)]) as pmd:
        http = pmd.http
        wait_until(lambda: http.get(f"{API}/programs/1/logs").json()["logs"] == "up")

        def stop_pmd(events: list[dict]) -> bool:
            pmd.signal(15)
            return False  # read on: the stream must end by itself

        events = read_events(http, f"{API}/programs/1/logs/stream", until=stop_pmd)
        assert text_of(events) == ["up"]
        assert pmd.wait(timeout=5) == 0


def test_the_stream_says_when_the_program_becomes_ready(http):
    i = http.post(f"{API}/programs/add", json=program(
        "announcer", "sh -c 'echo booting; sleep 0.5; echo up; exec sleep 30'",
        readiness={"log_line": "^up$"})).json()["id"]
    http.post(f"{API}/programs/{i}/start")
    events = read_events(http, f"{API}/programs/{i}/logs/stream",
                         until=lambda es: any(e.get("event") == "ready" for e in es))
    ready = next(e for e in events if e.get("event") == "ready")
    body = json.loads(ready["data"])
    assert body["via"] == "log_line" and body["instance"] == "announcer"
    # after the line that made it ready
    assert "up" in text_of(events[:events.index(ready)])
    http.post(f"{API}/programs/remove/{i}")


def test_a_quick_start_log_streams_live(pmd, http):
    fifo = pmd.base / "quick-stream.fifo"
    os.mkfifo(fifo)
    body = {"name": "streamed-quick", "user": program("x", "true")["user"], "ttl": 600,
            "command": f"sh -c 'echo first; read line < {fifo}; echo \"$line\"; sleep 30'"}
    started = http.post(f"{API}/quick-start", json=body).json()
    tid = started["temporary_id"]
    url = f"{API}/quick-start/{tid}/logs/stream"
    seen: list[dict] = []

    def until(events: list[dict]) -> bool:
        if text_of(events) == ["first"] and not seen:
            seen.append({})
            with open(fifo, "w") as writer:  # written while the stream is open
                writer.write("second\n")
        return "second" in text_of(events)

    events = read_events(http, url, until=until)
    assert text_of(events) == ["first", "second"]
    assert_error(http.get(f"{API}/quick-start/{tid}/logs/stream", params={"port": 80}), 400,
                 "VALIDATION_ERROR", "port")
    assert http.post(f"{API}/quick-start/{tid}/stop").json()["cleaned_up"]
    wait_until(lambda: http.get(f"{API}/quick-start/{tid}/status").status_code == 404,
               what="the end of its grace")
    assert_error(http.get(f"{API}/quick-start/{tid}/logs/stream"), 404, "NOT_FOUND")
