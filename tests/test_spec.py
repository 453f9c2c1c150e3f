"""ProgramSpec: the validation rules of the add/edit schema and supervisord's knobs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pmd_init.model.spec import ProgramSpec


def field_of(exc: ValidationError) -> str:
    return ".".join(str(p) for p in exc.errors()[0]["loc"])


def test_defaults_are_the_documented_ones():
    spec = ProgramSpec(name="a", command="sleep 1")
    assert (spec.enabled, spec.boot, spec.delay_seconds, spec.autorestart, spec.priority) == \
        (True, False, 0, "unexpected", 999)
    assert (spec.logs_enabled, spec.log_max_bytes, spec.log_backups) == (True, 5242880, 2)
    assert (spec.exitcodes, spec.startsecs, spec.startretries) == ([0], 1, 3)
    assert (spec.stop_signal, spec.stop_timeout, spec.lazy_load) == ("TERM", 10, False)



def test_an_expected_exit_is_a_listed_code_from_a_process_that_exited_by_itself():
    spec = ProgramSpec(name="a", command="sleep 1", exitcodes=[0, 3, 143])
    assert spec.expects_exit(0) and spec.expects_exit(3)
    assert not spec.expects_exit(1)
    assert not spec.expects_exit(143)  # SIGTERM's 128+15: a signal, even when listed
    assert not spec.expects_exit(None)  # an exit nobody could wait for

@pytest.mark.parametrize("fields,field", [
    ({"name": 'we"b'}, "name"),
    ({"name": "we'b"}, "name"),
    ({"name": "a/b"}, "name"),
    ({"description": "x" * 501}, "description"),
    ({"command": "echo a\nb"}, "command"),
    ({"command": "echo a\rb"}, "command"),
    ({"command": "echo \x00"}, "command"),
    ({"user": "Root"}, "user"),
    ({"directory": "relative/dir"}, "directory"),
    ({"stdout_logfile": "out.log"}, "stdout_logfile"),
    ({"delay_seconds": 3601}, "delay_seconds"),
    ({"priority": 0}, "priority"),
    ({"priority": 1000}, "priority"),
    ({"log_backups": 101}, "log_backups"),
    ({"autorestart": "sometimes"}, "autorestart"),
    ({"terminal_id": 0}, "terminal_id"),
    ({"terminal_shell": "csh"}, "terminal_shell"),
    ({"port_range": {"start": 10, "end": 5}}, "port_range"),
    ({"stop_signal": "STOP"}, "stop_signal"),
    ({"unknown_field": 1}, "unknown_field"),
])
def test_invalid_fields_are_named(fields, field):
    with pytest.raises(ValidationError) as info:
        ProgramSpec.model_validate({"name": "a", "command": "sleep 1", **fields})
    assert field_of(info.value).startswith(field)


def test_lazy_load_with_boot_is_refused():
    with pytest.raises(ValidationError, match="lazy_load cannot be combined with boot"):
        ProgramSpec(name="a", command="x", boot=True, lazy_load=True)


def test_port_param_needs_a_port_range_and_a_value():
    with pytest.raises(ValidationError, match="port_param requires port_range"):
        ProgramSpec(name="a", command="x", port_param="--listen")
    with pytest.raises(ValidationError, match="port_param must not be empty"):
        ProgramSpec(name="a", command="x", port_param="", port_range={"start": 1, "end": 2})


def test_user_existence_is_checked_only_when_asked():
    ProgramSpec(name="a", command="x", user="nosuchuser")
    with pytest.raises(ValidationError, match="does not exist"):
        ProgramSpec.model_validate({"name": "a", "command": "x", "user": "nosuchuser"},
                                   context={"check_accounts": True})
    ProgramSpec.model_validate({"name": "a", "command": "x", "user": "root"},
                               context={"check_accounts": True})


def test_hoody_kit_is_derived_from_the_directory():
    assert ProgramSpec(name="a", command="x", directory="/hoody/plugins/x").hoody_kit
    assert not ProgramSpec(name="a", command="x", directory="/opt", hoody_kit=True).hoody_kit


def test_autorestart_accepts_booleans_and_signals_accept_sig_prefix():
    spec = ProgramSpec(name="a", command="x", autorestart=True, stop_signal="sigint")
    assert spec.autorestart == "true"
    assert spec.stop_signal == "INT"


# ---- readiness, dependencies, oneshot, backoff -----------------------------------------


def test_depends_on_a_list_means_ready_for_each():
    spec = ProgramSpec(name="api", command="x", depends_on=["db", "cache", "db"])
    assert spec.depends_on == {"db": "ready", "cache": "ready"}
    spec = ProgramSpec(name="api", command="x", depends_on={"db": "healthy", "m": "completed"})
    assert spec.to_json()["depends_on"] == {"db": "healthy", "m": "completed"}


@pytest.mark.parametrize("fields,field,words", [
    ({"depends_on": ["a"]}, "depends_on", "itself"),
    ({"depends_on": {"db": "alive"}}, "depends_on.db", "started"),
    ({"depends_on": [1]}, "depends_on", "program names"),
    ({"readiness": {}}, "readiness", "exactly one"),
    ({"readiness": {"fd": 3, "notify": True}}, "readiness", "exactly one"),
    ({"readiness": {"log_line": "(unclosed"}}, "readiness.log_line", "regular expression"),
    ({"readiness": {"fd": 2}}, "readiness.fd", "3"),
    ({"readiness": {"fd": 256}}, "readiness.fd", "255"),
    ({"readiness": {"notify": False}}, "readiness.notify", ""),
    ({"readiness": {"socket": True}}, "readiness.socket", ""),
    ({"readiness": {"probe": {"type": "http"}}}, "readiness.probe", "url"),
    ({"readiness": {"fd": 3, "timeout_seconds": 0}}, "readiness.timeout_seconds", ""),
    ({"backoff": "random"}, "backoff", ""),
    ({"backoff_max_seconds": 0}, "backoff_max_seconds", ""),
    ({"startretries": -2}, "startretries", ""),
])
def test_new_fields_are_validated_and_named(fields, field, words):
    with pytest.raises(ValidationError) as info:
        ProgramSpec.model_validate({"name": "a", "command": "sleep 1", **fields})
    assert field_of(info.value).startswith(field)
    assert words in str(info.value)


def test_readiness_names_its_source():
    assert ProgramSpec(name="a", command="x", readiness={"fd": 3}).readiness.source == "fd"
    spec = ProgramSpec(name="a", command="x",
                       readiness={"probe": {"type": "tcp", "port": 80}, "timeout_seconds": 5})
    assert spec.readiness.source == "probe" and spec.readiness.timeout_seconds == 5


def test_oneshot_implies_no_restart_and_no_startsecs():
    spec = ProgramSpec(name="m", command="x", oneshot=True, autorestart="true", startsecs=5)
    assert (spec.autorestart, spec.startsecs) == ("false", 0)


def test_backoff_schedules():
    linear = ProgramSpec(name="a", command="x", backoff_max_seconds=4)
    assert [linear.retry_delay(n) for n in range(1, 7)] == [1, 2, 3, 4, 4, 4]
    exponential = ProgramSpec(name="a", command="x", backoff="exponential")
    assert [exponential.retry_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert exponential.retry_delay(10_000) == 60  # no overflow however long it retries
    assert ProgramSpec(name="a", command="x", startretries=-1).startretries == -1


def test_log_forward_modes_are_the_captures():
    """model/ imports nothing of pmd, so the modes are written twice: held equal here."""
    from pmd_init.logs.capture import FORWARD_MODES as CAPTURE_MODES
    from pmd_init.model.spec import FORWARD_MODES
    from pmd_init.settings import forward_mode

    assert FORWARD_MODES == CAPTURE_MODES
    assert [forward_mode(m) for m in CAPTURE_MODES] == list(CAPTURE_MODES)
    assert (forward_mode("1"), forward_mode("0"), forward_mode("loud")) == \
        ("prefixed", "off", None)


def test_watched_paths_expand_as_the_start_does():
    spec = ProgramSpec.model_validate({
        "name": "w", "command": "sleep 30", "directory": "${APP:-/srv}/current",
        "watch": {"paths": ["config", "${SHARED}/rules", "${MISSING}/x"]}})
    env = {"APP": "/opt/app", "SHARED": "/etc/shared"}
    # the directory's and the paths' references come from pmd's environment; a path whose
    # reference cannot be expanded is not watched (its start reports the missing variable)
    assert spec.watched_paths(env) == ["/opt/app/current/config", "/etc/shared/rules"]
