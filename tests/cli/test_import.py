"""`pmd import`: supervisord's own sample configuration (`echo_supervisord_conf`), and a
supervisord setup, a Procfile and PM2 ecosystem files written as people write them, turned
into programs.json that a real pmd boots with the same programs running; what cannot be
carried over is listed on stderr."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT, Pmd

API = "/api/v1/daemon"


def pmd_import(*args: str, env: dict[str, str] | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pmd_init.cli.pmd", "import", *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd or ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def boot(base: Path, document: dict[str, Any], env: dict[str, str] | None = None
         ) -> dict[str, dict[str, Any]]:
    """Boot a pmd on `document`; the status of each program once all settled."""
    with Pmd(base, document["programs"], env=env or {}) as pmd:
        def settled() -> dict[str, dict[str, Any]] | None:
            found = {s["name"]: s["status"]
                     for s in pmd.http.get(f"{API}/status").json()["statuses"]}
            if any(s["status"] in ("STARTING", "BACKOFF") for s in found.values()):
                return None
            return found
        result: dict[str, dict[str, Any]] = pmd.wait_for(settled, timeout=20,
                                                          what="programs settled")
        assert "config_problem" not in pmd.http.get(f"{API}/health").json() or \
            pmd.http.get(f"{API}/health").json()["config_problem"] is None
        return result


def test_supervisords_sample_configuration(tmp_path: Path) -> None:
    """The sample as it comes (every program commented out), then with its
    [program:theprogramname] block uncommented as a user would, made runnable here."""
    tool = shutil.which("echo_supervisord_conf")
    if tool is None:
        pytest.skip("echo_supervisord_conf is not installed (Debian: apt-get install "
                    "supervisor)")
    sample = subprocess.run([tool], capture_output=True, text=True, check=True).stdout
    (tmp_path / "supervisord.conf").write_text(sample)
    plain = pmd_import(str(tmp_path / "supervisord.conf"), "--format", "supervisord")
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout) == {"version": 1, "programs": []}
    for section in ("unix_http_server", "supervisord", "supervisorctl",
                    "rpcinterface:supervisor"):
        assert f"[{section}]: the whole section not carried over" in plain.stderr

    block = re.search(r"^;\[program:theprogramname\]\n(?:;.*\n)+?;serverurl=AUTO.*\n",
                      sample, re.M)
    assert block is not None
    program = re.sub(r"^;", "", block[0], flags=re.M)
    program = (program.replace("command=/bin/cat", "command=sleep 60")
               .replace("user=chrism", "user=root")
               .replace("/a/path", str(tmp_path / "the.log")))
    (tmp_path / "supervisord.conf").write_text(sample.replace(block[0], program))
    done = pmd_import(str(tmp_path / "supervisord.conf"))
    assert done.returncode == 0, done.stderr
    programs = json.loads(done.stdout)["programs"]
    assert [p["name"] for p in programs] == ["theprogramname"]
    spec = programs[0]
    assert spec["command"] == "sleep 60" and spec["directory"] == "/tmp"
    assert spec["environment"] == {"A": "1", "B": "2"}
    assert spec["stop_signal"] == "QUIT" and spec["stop_timeout"] == 10
    assert spec["log_max_bytes"] == 1 << 20 and spec["log_backups"] == 10
    assert (spec["boot"], spec["autorestart"], spec["startsecs"], spec["startretries"],
            spec["exitcodes"], spec["priority"]) == (True, "unexpected", 1, 3, [0], 999)
    # every key of the block without a pmd meaning is named, with its reason
    for key in ("umask", "redirect_stderr", "stopasgroup", "killasgroup",
                "stdout_capture_maxbytes", "stdout_events_enabled", "stdout_syslog",
                "stderr_capture_maxbytes", "stderr_events_enabled", "stderr_syslog",
                "serverurl"):
        assert re.search(rf"\[program:theprogramname\]: {key}=\S+ not carried over: \S",
                         done.stderr), key
    statuses = boot(tmp_path / "pmd", json.loads(done.stdout))
    assert statuses["theprogramname"]["status"] == "RUNNING"


def test_a_supervisord_setup_with_includes_env_and_numprocs(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "supervisord.conf"
    (tmp_path / "etc" / "conf.d").mkdir(parents=True)
    conf.write_text("""\
[supervisord]
nodaemon=true
logfile=/dev/null

[include]
files = conf.d/*.conf

[program:web]
command=sh -c 'echo "web on %(ENV_WEB_PORT)s as $$$$"; exec sleep 60'
directory=%(here)s
environment=GREETING="hello, world",PATH="/usr/bin:/bin:%(ENV_EXTRA_PATH)s"
stdout_logfile=/dev/stdout
stdout_logfile_maxbytes=0
autorestart=true
priority=10
stopsignal=INT
""")
    (tmp_path / "etc" / "conf.d" / "workers.conf").write_text(f"""\
[program:worker]
command=sleep 6%(process_num)d
process_name=%(program_name)s_%(process_num)02d
numprocs=3
numprocs_start=1
stdout_logfile={tmp_path}/worker-%(process_num)d.log
startsecs=0
stopsignal=WINCH

[group:all]
programs=web,worker

[eventlistener:watch]
command=true
events=PROCESS_STATE
""")
    done = pmd_import(str(conf), env={"WEB_PORT": "8080", "EXTRA_PATH": "/opt/bin"})
    assert done.returncode == 0, done.stderr
    programs = {p["name"]: p for p in json.loads(done.stdout)["programs"]}
    assert list(programs) == ["web", "worker_01", "worker_02", "worker_03"]
    web = programs["web"]
    # %(ENV_X)s: pmd's own reference, read when it starts; the shell's $$ kept as $$
    assert web["command"] == "sh -c 'echo \"web on ${WEB_PORT} as $$$$$$$$\"; exec sleep 60'"
    assert web["environment"] == {"GREETING": "hello, world",
                                  "PATH": "/usr/bin:/bin:${EXTRA_PATH}"}
    assert web["directory"] == str(conf.parent.resolve())
    assert "stdout_logfile" not in web and web["log_max_bytes"] == 0
    assert (web["autorestart"], web["priority"], web["stop_signal"]) == ("true", 10, "INT")
    assert programs["worker_02"]["command"] == "sleep 62"
    assert programs["worker_03"]["stdout_logfile"] == f"{tmp_path}/worker-3.log"
    assert programs["worker_01"]["startsecs"] == 0
    assert "stop_signal" not in programs["worker_01"]
    stderr = done.stderr
    assert "[program:web]: stdout_logfile=/dev/stdout not carried over" in stderr
    assert "[program:worker]: stopsignal=WINCH not carried over" in stderr
    assert "[group:all]: the whole section not carried over" in stderr
    assert "[eventlistener:watch]: the whole section not carried over" in stderr

    out = tmp_path / "config" / "programs.json"
    out.parent.mkdir()
    written = pmd_import(str(conf), "--write", str(out),
                         env={"WEB_PORT": "8080", "EXTRA_PATH": "/opt/bin"})
    assert written.returncode == 0 and written.stdout == ""
    assert json.loads(out.read_text()) == json.loads(done.stdout)
    assert not list(out.parent.glob(".*.tmp"))
    statuses = boot(tmp_path / "pmd", json.loads(out.read_text()),
                    env={"WEB_PORT": "8080", "EXTRA_PATH": "/opt/bin"})
    assert {n: s["status"] for n, s in statuses.items()} == dict.fromkeys(programs,
                                                                          "RUNNING")
    assert statuses["web"]["expanded"]["environment"]["PATH"] == "/usr/bin:/bin:/opt/bin"


def test_a_procfile_and_its_env(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "Procfile").write_text(
        "# a Heroku-style app\n"
        "web: echo \"serving on $PORT\" && exec sleep 60\n"
        "worker: exec sleep 61\n"
        "release: this line has no colon-command? \n"
        "not a process line\n")
    (app / ".env").write_text("PORT=5000\nRAILS_ENV=production\n")
    done = pmd_import(str(app / "Procfile"))
    assert done.returncode == 0, done.stderr
    programs = {p["name"]: p for p in json.loads(done.stdout)["programs"]}
    assert list(programs) == ["web", "worker", "release"]
    assert programs["web"]["command"] == \
        "sh -c 'echo \"serving on $$PORT\" && exec sleep 60'"
    assert programs["web"]["env_file"] == [str(app / ".env")]
    assert programs["web"]["directory"] == str(app)
    assert "Procfile:5: not a process line not carried over" in done.stderr
    document = json.loads(done.stdout)
    document["programs"] = [p for p in document["programs"] if p["name"] != "release"]
    statuses = boot(tmp_path / "pmd", document)
    assert {n: s["status"] for n, s in statuses.items()} == {"web": "RUNNING",
                                                             "worker": "RUNNING"}


ECOSYSTEM = {"apps": [
    {"name": "api", "script": "server.py", "args": ["--workers", "2"],
     "interpreter": "python3", "cwd": ".", "env": {"NODE_ENV": "production", "PORT": 3000},
     "env_production": {"NODE_ENV": "production"}, "max_memory_restart": "300M",
     "min_uptime": "2s", "max_restarts": 10, "kill_timeout": 3000, "autorestart": True,
     "watch": True, "exec_mode": "cluster", "instances": 2},
    {"name": "cron", "script": "sleep", "args": "62", "interpreter": "none",
     "exp_backoff_restart_delay": 100, "stop_exit_codes": [0]},
]}


def test_a_pm2_ecosystem_file_json_and_js(tmp_path: Path) -> None:
    (tmp_path / "server.py").write_text("import time\ntime.sleep(60)\n")
    (tmp_path / "ecosystem.json").write_text(json.dumps(ECOSYSTEM))
    done = pmd_import(str(tmp_path / "ecosystem.json"))
    assert done.returncode == 0, done.stderr
    programs = {p["name"]: p for p in json.loads(done.stdout)["programs"]}
    api = programs["api"]
    assert api["command"] == "python3 server.py --workers 2"
    assert api["directory"] == str(tmp_path.resolve())
    assert api["environment"] == {"NODE_ENV": "production", "PORT": "3000"}
    assert (api["max_memory_restart"], api["startsecs"], api["startretries"],
            api["stop_timeout"], api["autorestart"]) == (300 << 20, 2, 10, 3, "true")
    cron = programs["cron"]
    assert (cron["command"], cron["backoff"], cron["exitcodes"], cron["autorestart"]) == \
        ("sleep 62", "exponential", [0], "unexpected")
    for key in ("env_production", "watch", "exec_mode", "instances=2",
                "exp_backoff_restart_delay"):
        assert re.search(rf"apps\[\d\]: {key}.* not carried over: \S", done.stderr), key
    statuses = boot(tmp_path / "pmd", json.loads(done.stdout))
    assert {n: s["status"] for n, s in statuses.items()} == {"api": "RUNNING",
                                                             "cron": "RUNNING"}

    if shutil.which("node") is None:
        pytest.skip("node is not installed: the .js form is not evaluated")
    (tmp_path / "ecosystem.config.js").write_text(
        "const shared = {autorestart: true};\n"
        f"module.exports = {{apps: {json.dumps(ECOSYSTEM['apps'])}.map(a => "
        "({...shared, ...a}))};\n")
    from_js = pmd_import(str(tmp_path / "ecosystem.config.js"))
    assert from_js.returncode == 0, from_js.stderr
    assert json.loads(from_js.stdout)["programs"][0] == json.loads(done.stdout)["programs"][0]


def test_unreadable_input_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "ecosystem.json").write_text("{not json")
    bad = pmd_import(str(tmp_path / "ecosystem.json"))
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("pmd: ") and "not JSON" in bad.stderr
    missing = pmd_import(str(tmp_path / "nothing.conf"))
    assert missing.returncode == 1 and "nothing.conf" in missing.stderr
