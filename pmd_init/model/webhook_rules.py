"""Which targets a program's webhooks may name, and which headers they may send
(daemon-api-extras.md, "Webhooks object").

https only, no userinfo, no private, loopback or otherwise non-public address; header names
that are tokens and not pmd's own, header values of printable ASCII. `WebhooksSpec` checks
every URL and header with these rules when it is accepted; the delivery
(supervisor/webhooks.py) checks every address the host name resolves to again at each
delivery, with `address_problem`.

This module imports nothing of pmd: the program model and the delivery both build on it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from urllib.parse import urlsplit

#: For tests only: "1" lets webhooks reach 127.0.0.0/8 and ::1.
ALLOW_LOOPBACK_ENV = "PMD_WEBHOOK_ALLOW_LOOPBACK"
#: The operator's switch (`--webhook-allow-local`, which pid1.main turns into this "1"):
#: webhooks may reach loopback, private and link-local addresses, and localhost names, as
#: a receiver inside the container or its pod needs. Off by default: a webhook is then no
#: way for whoever may edit programs to reach services inside the container.
ALLOW_LOCAL_ENV = "PMD_WEBHOOK_ALLOW_LOCAL"

URL_MAX = 2048
HEADER_VALUE_MAX = 4096

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
#: Headers that frame the request or the connection are pmd's: a configured value would
#: let a header smuggle a second request. X-Pmd-* are pmd's own.
RESERVED_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
    "trailer", "upgrade", "expect", "proxy-connection",
})
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def loopback_allowed() -> bool:
    # The one read of the environment outside settings (tests/test_module_state.py names
    # it). Not a Settings field: these rules run inside WebhooksSpec's validators, and a
    # spec is validated from programs.json, API bodies, quick-starts and re-exec snapshots
    # alike, a dozen call sites that would all have to carry a validation context. The
    # delivery asks the same function, so validation and delivery never disagree. Read at
    # each call, never at import: a test may set it for itself.
    return os.environ.get(ALLOW_LOOPBACK_ENV) == "1" or local_allowed()


def local_allowed() -> bool:
    # Read as loopback_allowed() reads its switch, for the same reasons.
    return os.environ.get(ALLOW_LOCAL_ENV) == "1"


def address_problem(address: Address) -> str | None:
    """Why a webhook may not reach `address` ("a private address"), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "a scoped address"
        # An IPv4 address inside an IPv6 one is judged as the IPv4 address it reaches.
        if address.ipv4_mapped is not None:
            return address_problem(address.ipv4_mapped)
        embedded = address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and (problem := address_problem(embedded)):
            return problem
    if address.is_loopback:
        return None if loopback_allowed() else "a loopback address"
    local = local_allowed()
    for attribute, what in (
        ("is_unspecified", "an unspecified address"),
        ("is_multicast", "a multicast address"),
        ("is_reserved", "a reserved address"),
    ):
        if getattr(address, attribute):
            return what
    if local:  # --webhook-allow-local: private, link-local, carrier-grade NAT too
        return None
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private address"
    if not address.is_global:  # 100.64.0.0/10 (carrier-grade NAT) and the like
        return "not a public address"
    return None


def ip_literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_host(host: str) -> None:
    """A host name or IP literal a webhook may name (raises ValueError)."""
    address = ip_literal(host)
    if address is not None:
        problem = address_problem(address)
        if problem:
            raise ValueError(f"{host} is {problem}")
        return
    import socket  # here: a first start validates programs.json before it imports socket

    try:
        socket.inet_aton(host)
    except OSError:
        pass
    else:  # "127.1", "0x7f000001", "2130706433": the resolver reads these as addresses
        raise ValueError(f"{host} is an IPv4 address in a non-standard form")
    name = host.removesuffix(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"{host} is not a valid host name")
    if (name == "localhost" or name.endswith(".localhost")) and not local_allowed():
        raise ValueError(f"{host} is a loopback host name")


def check_url(url: str) -> str:
    """A webhook URL as the rules allow it (raises ValueError with the reason)."""
    if len(url) > URL_MAX:
        raise ValueError(f"must be at most {URL_MAX} characters")
    if any(not 0x20 < ord(c) < 0x7F for c in url):
        raise ValueError("must not contain spaces, control or non-ASCII characters "
                         "(percent-encode them)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if parts.scheme != "https":
        raise ValueError("must be an https:// URL")
    if "@" in parts.netloc:
        raise ValueError("must not contain userinfo (user:password@)")
    if not parts.hostname:
        raise ValueError("must name a host")
    if port == 0:
        raise ValueError("port must be 1-65535")
    if parts.netloc.startswith("[") and not isinstance(
            ip_literal(parts.hostname), ipaddress.IPv6Address):
        raise ValueError("brackets must hold an IPv6 address")
    check_host(parts.hostname)
    return url


def check_header_name(name: str) -> str:
    if not _TOKEN.fullmatch(name):
        raise ValueError("a header name must be 1-128 token characters (letters, digits, "
                         "!#$%&'*+-.^_`|~)")
    lower = name.lower()
    if lower in RESERVED_HEADERS or lower.startswith("x-pmd-"):
        raise ValueError(f"header {name} is set by pmd")
    return name


def check_header_value(value: str) -> str:
    if len(value) > HEADER_VALUE_MAX:
        raise ValueError(f"a header value must be at most {HEADER_VALUE_MAX} characters")
    if any(not (0x20 <= ord(c) < 0x7F or c == "\t") for c in value):
        raise ValueError("a header value must be printable ASCII (no CR, LF or NUL)")
    return value
