# Shared by the ci/ scripts: paths, image tags, logging. Sourced, not run.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${PMD_CI_CACHE:-$ROOT/.cache}
WHEELS=$CACHE/wheels
# The docker.io client matches the daemon that ci/dockerd starts; fall back to any docker.
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker || echo docker)}
BASE_IMAGE=${PMD_BASE_IMAGE:-pmd-base:bookworm}
IMAGE=${PMD_IMAGE:-pmd-init:ci}
TESTER_IMAGE=${PMD_TESTER_IMAGE:-pmd-init-tester:ci}
export DOCKER BASE_IMAGE IMAGE TESTER_IMAGE

say() { printf '%s %s\n' "[$(date +%H:%M:%S)]" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
