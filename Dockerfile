# pmd as a container's init (PID 1).
#
#   docker build -t pmd-init .
#   docker run -d --name app pmd-init                    # supervise /etc/pmd/programs.json
#   docker run --rm pmd-init sh -c 'exit 3'              # run a main command; exit code is 3
#   docker exec app pmd list
#
# Offline builds (no package index, a local base image and a folder of wheels):
#   docker build --network host \
#     --build-arg BASE=my-debian-python:bookworm \
#     --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/src/wheels \
#     -t pmd-init .
# with the wheels (and the python-prctl sdist) in .cache/wheels/ of the build context;
# they are copied to /src/wheels. The base needs python3 (>= 3.11); missing
# build tools (gcc, libcap-dev, Python headers, venv) are installed with apt.
#
# Non-root: `docker run -e PMD_USER=pmd ...` prepares the folders as root, then runs
# pmd_init as that user (the image has a `pmd` account, uid and gid 10001; any name or
# uid[:gid] works). `docker run --user 10001:10001 ...` (or Kubernetes' runAsUser) works
# too: the image's folders (and so the volumes made from them) belong to pmd.
# A non-root pmd cannot switch users: programs run as pmd's own user.
# Restricted pods: an arbitrary uid with group 0 and a read-only root file system work
# (`docker run --read-only --user 12345:0 --tmpfs /var/lib/pmd --tmpfs /var/log/pmd
# --tmpfs /run/pmd ...`): the folders belong to group 0 with its owner's rights, and pmd
# writes nowhere else. docs/orchestrators.md has the Kubernetes side.

ARG BASE=python:3.11-slim

# ---- build: a virtual environment with pmd and its dependencies ------------------------
FROM ${BASE} AS build

# Empty by default: pip uses the package index. Set both for offline builds.
ARG PIP_NO_INDEX=
ARG PIP_FIND_LINKS=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_USE_PEP517=1 \
    DEBIAN_FRONTEND=noninteractive

# python-prctl has no wheel: it compiles against libcap and the Python headers.
RUN set -eux; \
    need="gcc libc6-dev libcap-dev"; \
    python3 -c 'import sys, sysconfig, os.path; \
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || need="$need python3-dev"; \
    python3 -c 'import ensurepip' 2>/dev/null || need="$need python3-venv"; \
    apt-get update; \
    apt-get install -y --no-install-recommends $need; \
    rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/pmd/venv
ENV PATH=/opt/pmd/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Dependencies first (a layer that survives source changes), read from pyproject.toml.
# The glob copies .cache (of which .dockerignore lets only wheels/ in) to /src when the
# context has it, and nothing otherwise: then /src/wheels holds the local wheels.
COPY pyproject.toml .cach[e] /src/
RUN set -eux; \
    python3 -c 'import tomllib; \
print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt; \
    pip install -r /tmp/requirements.txt

COPY README.md /src/
COPY pmd_init /src/pmd_init
RUN set -eux; \
    pip install --no-deps /src; \
    pmd_init --version; \
    python3 -c 'import prctl, pmd_init'

# ---- runtime: python, libcap2, the venv, the entrypoint and an example config ----------
FROM ${BASE}

ENV DEBIAN_FRONTEND=noninteractive
RUN set -eux; \
    if ! ldconfig -p | grep -q 'libcap\.so\.2 '; then \
        apt-get update; \
        apt-get install -y --no-install-recommends libcap2; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    if ! id pmd >/dev/null 2>&1; then \
        groupadd --system --gid 10001 pmd; \
        useradd --system --uid 10001 --gid pmd --home-dir /var/lib/pmd \
            --shell /usr/sbin/nologin pmd; \
    fi

COPY --from=build /opt/pmd /opt/pmd
COPY config/ /usr/share/pmd/config/
COPY config/ /etc/pmd/
COPY entrypoint /entrypoint
RUN set -eux; \
    chmod 0755 /entrypoint; \
    mkdir -p /var/lib/pmd /var/log/pmd /run/pmd; \
    # The boot plan of the image's programs (docs/performance.md): a container's first
    # start spawns them before pmd's imports. An image with programs of its own runs
    # this again after copying them in (a plan of other programs is never used).
    /opt/pmd/venv/bin/pmd_init --write-boot-plan --config-dir /etc/pmd \
        --state-dir /var/lib/pmd; \
    chown -R pmd:pmd /etc/pmd /var/lib/pmd /var/log/pmd /run/pmd; \
    # An arbitrary uid in group 0 (OpenShift, `--user 12345:0`) may write there too.
    chgrp -R 0 /etc/pmd /var/lib/pmd /var/log/pmd /run/pmd; \
    chmod -R g=u /etc/pmd /var/lib/pmd /var/log/pmd /run/pmd; \
    /opt/pmd/venv/bin/pmd_init --version

ENV PATH=/opt/pmd/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PMD_CONFIG_DIR=/etc/pmd \
    PMD_STATE_DIR=/var/lib/pmd \
    PMD_LOG_DIR=/var/log/pmd \
    PMD_SOCKET=/run/pmd/pmd.sock \
    PMD_HOST=127.0.0.1 \
    PMD_PORT=9615 \
    PMD_GRACE=8

# Config (programs.json, programs.default.json), state (ephemeral.json) and program logs.
VOLUME ["/etc/pmd", "/var/lib/pmd", "/var/log/pmd"]

# The API listens on 127.0.0.1 and the Unix socket. To publish it, set PMD_HOST=0.0.0.0
# together with PMD_API_KEY or PMD_API_KEY_FILE.
STOPSIGNAL SIGTERM
# Liveness: pmd's loop answers (GET /livez over the socket; never a program's state).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["pmd", "livez"]
ENTRYPOINT ["/entrypoint"]
