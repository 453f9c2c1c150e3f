"""`${VAR}` references (model/expand.py) and env files (supervisor/expansion.py), without a
pmd: the syntax and its error messages, the OpenAPI patterns against the validator, and
env files read as python-dotenv's own `dotenv_values` reads them."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest
from dotenv import dotenv_values

from pmd_init.model.expand import ExpansionError, check, expand, references_pattern
from pmd_init.model.spec import ProgramSpec
from pmd_init.supervisor.expansion import expand_spec, read_env_file
from pmd_init.supervisor.spawn import SpawnError

ENV = {"A": "alpha", "EMPTY": "", "DIR": "/srv/app", "WHO": "root"}


@pytest.mark.parametrize(("text", "expanded"), [
    ("plain text", "plain text"),
    ("${A}", "alpha"),
    ("x-${A}-y", "x-alpha-y"),
    ("${MISSING:-fallback}", "fallback"),
    ("${EMPTY:-fallback}", "fallback"),       # :- also covers an empty value
    ("${EMPTY-fallback}", ""),                # - only an unset one
    ("${MISSING-fallback}", "fallback"),
    ("${MISSING:-}", ""),
    ("$$", "$"),
    ("$${A}", "${A}"),                        # $$ first: a literal, not a reference
    ("$$${A}", "$alpha"),
    ("$$$${A}", "$${A}"),
    ("$A $HOME $1 $", "$A $HOME $1 $"),       # not references: the shell's, untouched
    ("${A}${A}", "alphaalpha"),
])
def test_expand(text: str, expanded: str) -> None:
    assert expand(text, ENV) == expanded


@pytest.mark.parametrize("text", ["${MISSING}", "a ${MISSING} b"])
def test_an_unset_variable_is_an_error_naming_it(text: str) -> None:
    with pytest.raises(ExpansionError, match=r"\$\{MISSING\} is not set"):
        expand(text, ENV)


@pytest.mark.parametrize("text", ["${", "${A", "${1A}", "${A B}", "${A:-x", "${-x}",
                                  "${A:-${B}}", "${}"])
def test_bad_syntax_is_caught_before_any_lookup(text: str) -> None:
    with pytest.raises(ExpansionError, match="bad reference"):
        check(text)
    with pytest.raises(ExpansionError, match="bad reference"):
        expand(text, ENV)


def test_the_openapi_pattern_says_what_the_check_accepts() -> None:
    pattern = re.compile(references_pattern(r"\x00"))
    rng = random.Random(7)
    alphabet = "$${}}:-AB_1 x/"
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
        try:
            check(text)
            valid = True
        except ExpansionError:
            valid = False
        assert bool(pattern.match(text)) == valid, text


def test_a_spec_expands_every_field_and_keeps_its_text() -> None:
    spec = ProgramSpec(name="app", command="run --root ${DIR} --mode ${MODE:-prod}",
                       directory="${DIR}", user="${WHO}",
                       stdout_logfile="${DIR}/out.log",
                       environment={"GREETING": "${A}!", "PRICE": "$$5"})
    got = expand_spec(spec, ENV)
    assert got.command == "run --root /srv/app --mode prod"
    assert (got.directory, got.user, got.stdout_logfile) == ("/srv/app", "root",
                                                             "/srv/app/out.log")
    assert got.environment == {"GREETING": "alpha!", "PRICE": "$5"}
    assert spec.command == "run --root ${DIR} --mode ${MODE:-prod}"


@pytest.mark.parametrize(("fields", "message"), [
    ({"command": "run ${NOPE}"}, "command: ${NOPE} is not set"),
    ({"environment": {"X": "${NOPE}"}}, "environment.X: ${NOPE} is not set"),
    ({"directory": "${EMPTY:-relative}"}, "directory: 'relative'"),
    ({"user": "${A}x"}, None),   # alphax: a name, whether it exists is spawn's question
    ({"user": "${DIR}"}, "user: '/srv/app'"),
])
def test_what_cannot_expand_is_a_spawn_error_naming_the_field(
        fields: dict[str, object], message: str | None) -> None:
    spec = ProgramSpec(**{"name": "app", "command": "true", **fields})
    if message is None:
        assert expand_spec(spec, ENV).user == "alphax"
        return
    with pytest.raises(SpawnError) as caught:
        expand_spec(spec, ENV)
    assert message in str(caught.value)


# Files as people write them for docker compose and python-dotenv.
ENV_FILES = [
    "A=1\nB=2\n",
    "# comment\n\nexport NODE_ENV=production\nPORT = 3000\n",
    "URL=postgres://u:p@db:5432/app?sslmode=disable\n",
    "QUOTED=\"a value # not a comment\"\nINLINE=value # a comment\n",
    "SINGLE='${HOME} stays literal? $$'\nDOUBLE=\"tab\\tnew\\nline\"\n",
    "MULTI=\"first\nsecond\nthird\"\nAFTER=x\n",
    "BASE=/srv\nDERIVED=${BASE}/data\nDEFAULTED=${ECO_NOT_SET_HERE:-dflt}\n",
    "EMPTY=\nEMPTY_QUOTED=''\nNO_VALUE\n",
    "JSON='{\"a\": [1, 2], \"b\": \"c\"}'\n",
    "WINDOWS=crlf\r\nNEXT=line\r\n",
    "SPACES=   padded   \n",
    "UNICODE=héllo wörld ✓\n",
    "HOME_REF=${HOME}\n",
    "dup=1\ndup=2\n",
]


@pytest.mark.parametrize("text", ENV_FILES)
def test_env_files_read_as_python_dotenv_reads_them(tmp_path: Path, text: str) -> None:
    path = tmp_path / "app.env"
    path.write_text(text, newline="")
    reference = {k: v for k, v in dotenv_values(path).items() if v is not None}
    assert read_env_file(str(path), dict(os.environ)) == reference


def test_env_file_references_look_in_pmds_environment_not_os_environ(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text("FROM_BASE=${ONLY_IN_BASE}\nFROM_FILE=${LOCAL}\nLOCAL=late\n")
    assert read_env_file(str(path), {"ONLY_IN_BASE": "yes", "LOCAL": "base"}) == {
        "FROM_BASE": "yes", "FROM_FILE": "base", "LOCAL": "late"}


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"),
    ("A=1\nthis line is not one\n", "line 2: cannot parse 'this line is not one'"),
    (b"A=\xff\xfe\n", "is not UTF-8"),
    ("FIFO", "is not a regular file"),
    ("DIR", "is not a regular file"),
    ("BIG", "is larger than"),
])
def test_env_file_errors_name_the_file(tmp_path: Path, content: str | bytes | None,
                                       message: str) -> None:
    path = tmp_path / "app.env"
    if content == "FIFO":
        os.mkfifo(path)  # opening it for reading must not hang
    elif content == "DIR":
        path.mkdir()
    elif content == "BIG":
        path.write_bytes(b"A=" + b"x" * (1 << 20) + b"\n")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(SpawnError) as caught:
        read_env_file(str(path), {})
    assert str(path) in str(caught.value) and message in str(caught.value)
