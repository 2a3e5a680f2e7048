"""Which `Host` headers the server answers: the guard against DNS rebinding.

A web page the user visits can make its own name resolve to 127.0.0.1 and then send
requests to a server on loopback as if they were same-origin: the browser lets the page read
the answers. Such requests always carry the page's name in `Host`, so every request (every
route, keyed or not) is refused with a 400 unless its `Host` is one the server answers to:

- a loopback bind (127.0.0.1, ::1, localhost): `localhost`, `127.0.0.1`, `[::1]` and the bound
  address itself;
- another address: that address;
- every address (0.0.0.0, ::): any IP address, and `localhost`. The machine's own addresses
  change (DHCP, VPNs) and cannot be listed once at start; an IP literal is safe to accept,
  as a rebinding page can only send a name, never an address it does not serve itself;
- and the names given with `--allowed-hosts` (`api.example.com`, `*.example.com` for its
  subdomains, or `*` to turn the check off), with or without a port in the header.

Starlette's TrustedHostMiddleware matches names and `*.domain` patterns, but it answers
in plain text from inside its `__call__` (no hook for the API's error format) and cannot say
"any IP address", which a wildcard bind needs; so the check is written here.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from candorlm.errors import CandorError
from candorlm.serve.errors import APIError

log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_HEADER = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[^:\[\]]+))(?::(?P<port>[0-9]{1,5}))?")


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def host_of(header: str | None) -> str | None:
    """The host named by a `Host` header, lower case, without port or brackets; None when it is
    missing or malformed (a bare IPv6 address, a port out of range, characters no host has)."""
    if header is None:
        return None
    match = _HEADER.fullmatch(header.strip().lower())
    if match is None or (match["port"] is not None and int(match["port"]) > 65535):
        return None
    if match["v6"] is not None:
        address = ip_literal(match["v6"])
        return str(address) if address is not None and address.version == 6 else None
    name = match["name"]  # a trailing dot is not dropped: "localhost." may be resolved by DNS, not locally
    address = ip_literal(name)
    if address is not None:
        return str(address) if address.version == 4 else None
    return name if _NAME.fullmatch(name) else None


@dataclass(frozen=True)
class HostPolicy:
    """The hosts a server answers to (see the module docstring)."""

    names: frozenset[str]
    suffixes: tuple[str, ...] = ()  # from "*.example.com": ".example.com"
    any_ip: bool = False
    any_host: bool = False

    @classmethod
    def for_bind(cls, bind: str, allowed: Iterable[str] = ()) -> "HostPolicy":
        """The policy for a server bound to `bind`, plus the `--allowed-hosts` entries."""
        bound = bind.strip().strip("[]").lower()
        address = ip_literal(bound)
        names = set(LOOPBACK_NAMES)
        any_ip = bound in WILDCARD_BINDS
        if not any_ip:
            if bound == "localhost" or (address is not None and address.is_loopback):
                names.add(str(address) if address is not None else bound)
            else:
                names = {str(address) if address is not None else bound}
        suffixes: list[str] = []
        any_host = False
        for entry in allowed:
            kind, value = parse_allowed(entry)
            if kind == "any":
                any_host = True
            elif kind == "suffix":
                suffixes.append(value)
            else:
                names.add(value)
        return cls(frozenset(names), tuple(suffixes), any_ip, any_host)

    def allows(self, host: str | None) -> bool:
        if self.any_host:
            return True
        if host is None:
            return False
        if host in self.names or any(host.endswith(s) for s in self.suffixes):
            return True
        return self.any_ip and ip_literal(host) is not None

    def describe(self) -> str:
        """For the server's start-up line (never sent to callers)."""
        if self.any_host:
            return "any Host (--allowed-hosts '*': no DNS-rebinding guard)"
        parts = sorted(f"[{n}]" if ":" in n else n for n in self.names) + [f"*{s}" for s in self.suffixes]
        return ", ".join(parts + (["any IP address"] if self.any_ip else []))


def parse_allowed(entry: str) -> tuple[str, str]:
    """One `--allowed-hosts` entry as ("any", "*"), ("suffix", ".example.com") or ("name", host)."""
    text = entry.strip().lower()
    if text == "*":
        return "any", "*"
    if text.startswith("*."):
        if _NAME.fullmatch(text[2:]) and ip_literal(text[2:]) is None:
            return "suffix", text[1:]
    elif text:
        address = ip_literal(text)  # 10.0.0.1, ::1 or [::1]
        if address is not None:
            return "name", str(address)
        if _NAME.fullmatch(text):
            return "name", text
    raise CandorError(f"--allowed-hosts: {entry!r} is not a host name or IP address; give names like "
                      f"api.example.com or *.example.com (comma-separated, no scheme or port), or * for any host")


def split_allowed(value: str | Iterable[str] | None) -> list[str]:
    """`--allowed-hosts` as a list: a comma-separated string or a list of entries."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else [p for v in value for p in v.split(",")]
    out = [item.strip() for item in items if item.strip()]
    for item in out:
        parse_allowed(item)
    return out


class HostCheck:
    """ASGI middleware: a request whose `Host` the policy does not allow gets a 400 in the API's
    error format (and its audit record, under /v1, names the host)."""

    def __init__(self, app: ASGIApp, policy: HostPolicy):
        self.app, self.policy = app, policy
        self._reported: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.policy.any_host:
            await self.app(scope, receive, send)
            return
        headers = [value.decode("latin-1") for name, value in scope.get("headers", []) if name == b"host"]
        host = host_of(headers[0]) if len(headers) == 1 else None
        if self.policy.allows(host):
            await self.app(scope, receive, send)
            return
        shown = headers[0][:200] if len(headers) == 1 else None
        audit = scope.get("state", {}).get("audit")
        if audit is not None:
            audit["refused_host"] = shown
        if shown not in self._reported and len(self._reported) < 1000:  # once per name, not per request
            self._reported.add(shown or "")
            log.warning("refused a request for Host %r (not an address this server is bound to, nor in "
                        "--allowed-hosts): a DNS-rebinding attempt, or a name to add with --allowed-hosts", shown)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        what = f"the Host header {shown!r} is" if shown else "a request without exactly one Host header is"
        refusal = APIError(400, f"{what} not one this server answers to (a guard against DNS rebinding). If you "
                                f"meant to reach it under that name, its operator can add the name with "
                                f"--allowed-hosts", code="invalid_host")
        await refusal.response()(scope, receive, send)
