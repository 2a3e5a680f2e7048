"""`candorlm serve`: check every setting, open the audit log, load a run, listen, run Uvicorn.

Everything a user can get wrong is refused here, before the server listens, with one line
saying what to change (a CandorError; exit status 2 from the CLI): numbers out of range, an
unknown device, a bad --allowed-hosts entry, an audit log that cannot be written, a keys file
that is missing or damaged, an address that is not this machine's or a port already in use.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from candorlm.errors import CandorError

if TYPE_CHECKING:
    from candorlm.io.sealed import Key

log = logging.getLogger(__name__)

# Each numeric setting's range: (flag, smallest, largest or None).
RANGES = {"port": ("--port", 1, 65535), "max_batch": ("--max-batch", 1, 1024),
          "max_tokens": ("--max-tokens", 1, None), "max_body_bytes": ("--max-body", 1024, 1 << 30)}
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_binding(host: str, keys: str | Path | None, insecure_no_auth: bool) -> None:
    """Refuse to listen beyond loopback with no keys, unless the operator insists."""
    if keys is not None and insecure_no_auth:
        raise CandorError("--keys and --insecure-no-auth contradict each other; give one")
    if keys is None and not insecure_no_auth and not is_loopback(host):
        raise CandorError(
            f"refusing to serve on {host} without API keys: anyone who can reach it could use the model. "
            f"Create a key (`candorlm keys add NAME --scopes generate --keys keys.json`) and pass "
            f"--keys keys.json, bind to 127.0.0.1, or pass --insecure-no-auth if you really mean it")


def check_numbers(**values: int) -> None:
    """Each numeric setting within its range (RANGES), or a CandorError naming the flag."""
    for name, value in values.items():
        flag, low, high = RANGES[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            span = f"from {low:,} to {high:,}" if high is not None else f"at least {low:,}"
            raise CandorError(f"{flag} must be a whole number {span}, got {value!r}")


def check_device(device: str) -> None:
    import torch

    if not _DEVICE.fullmatch(device):
        raise CandorError(f"--device {device!r} is not a device; give auto, cpu, cuda, cuda:N or mps")
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            have = f"GPUs 0 to {count - 1}" if count else "no CUDA GPU"
            raise CandorError(f"--device {device}: this machine has {have}; use --device auto or cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise CandorError("--device mps: no Apple GPU is available here; use --device auto or cpu")


def check_model_name(name: str) -> None:
    if not name.strip() or len(name) > 200 or any(not ch.isprintable() or ch == "/" for ch in name):
        raise CandorError(f"--model-name {name!r}: give 1 to 200 printable characters, no '/' (clients send it as "
                          f"the request's model, and in the path /v1/models/NAME)")


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on host:port, one per address the host resolves to (localhost: 127.0.0.1
    and ::1), or a CandorError saying why not (in use, not an address of this machine, a port
    that needs privileges, a name that does not resolve)."""
    try:
        found = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise CandorError(f"--host {host} does not resolve to an address ({getattr(exc, 'strerror', exc)}); give an "
                          f"IP address such as 127.0.0.1") from None
    addresses = list(dict.fromkeys((family, address) for family, _, _, _, address in found))
    sockets: list[socket.socket] = []
    try:
        for family, address in addresses:
            try:
                sockets.append(socket.create_server(address, family=family, backlog=2048))
            except OSError as exc:
                # A name that also resolves to an address family this machine lacks (::1 without IPv6).
                if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) and len(addresses) > 1:
                    continue
                raise
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise _cannot_listen(host, port, exc) from None
    if not sockets:
        raise CandorError(f"--host {host}: none of its addresses is this machine's; give 127.0.0.1 or 0.0.0.0")
    return sockets


def _cannot_listen(host: str, port: int, exc: OSError) -> CandorError:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return CandorError(f"{where} is already in use (another server?); choose another --port")
    if exc.errno == errno.EACCES:
        return CandorError(f"not allowed to listen on {where} (ports below 1024 need privileges); choose a "
                           f"--port from 1024 up")
    if exc.errno == errno.EADDRNOTAVAIL:
        return CandorError(f"--host {host} is not an address of this machine; give one of its addresses, "
                           f"127.0.0.1 or 0.0.0.0")
    return CandorError(f"cannot listen on {where}: {exc.strerror or exc}")


def default_audit_log(run: Path) -> Path:
    """RUN/audit.jsonl, unless the run is encrypted: the log is plain text, and candorlm does not
    write into a sealed run (its SHA256SUMS vouches for every file), so the operator chooses."""
    from candorlm.io.sealed import is_encrypted

    if any(is_encrypted(run / name) for name in ("config.toml", "model.safetensors", "audit.jsonl")):
        raise CandorError(f"{run} is encrypted, and candorlm does not write into an encrypted run; give the audit "
                          f"log a path outside it with --audit-log PATH (it is written as plain text)")
    return run / "audit.jsonl"


TASK_ROUTES = ("sentiment", "translate")  # fine-tuned runs that are not language models (serve/tasks.py)


def task_of(run: Path) -> str | None:
    """The task of a fine-tuned run (its task.json), None for a language model."""
    import json

    from candorlm.checkpoint.run import TASK_FILE
    from candorlm.io.sealed import read_text

    task_file = run / TASK_FILE
    return json.loads(read_text(task_file)).get("task") if task_file.is_file() else None


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, keys: str | Path | None = None,
          insecure_no_auth: bool = False, audit_log: str | Path | None = None, audit_text: bool = False,
          max_batch: int = 16, model_name: str | None = None, device: str = "auto",
          max_tokens: int = 1024, max_body_bytes: int = 1 << 20, key: Key | None = None,
          allowed_hosts: str | Iterable[str] | None = None) -> None:
    """Serve a run over HTTP until interrupted (see candorlm/serve/app.py for the endpoints; a
    sentiment or translate run gets candorlm/serve/tasks.py's classification or completion route).
    An encrypted run (`candorlm encrypt`) is read with `key`, or the key in CANDORLM_KEY.

    Args:
        run_dir: Run directory.
        host: Address to listen on; beyond loopback it needs keys.
        port: Port.
        keys: Keys file from `candorlm keys add`: keys required.
        insecure_no_auth: Serve beyond loopback without keys (anyone may call).
        audit_log: Audit log (JSONL); default RUN/audit.jsonl.
        audit_text: Also log prompt and completion text (off: counts only).
        max_batch: Requests decoded together (slots in the KV cache).
        model_name: Model id clients use (default: the run's folder name).
        device: cpu, cuda or auto.
        max_tokens: Most new tokens one request may ask for.
        max_body_bytes: Largest request body in bytes.
        key: Key of an encrypted run (None: the environment's).
        allowed_hosts: Host names clients may use besides the bound address, comma-separated
            (*.example.com for subdomains); others get a 400, against DNS rebinding.
    """
    from candorlm.rundir import open_run
    from candorlm.serve.hosts import HostPolicy, split_allowed

    check_numbers(port=port, max_batch=max_batch, max_tokens=max_tokens, max_body_bytes=max_body_bytes)
    check_device(device)
    if model_name is not None:
        check_model_name(model_name)
    check_binding(host, keys, insecure_no_auth)
    hosts = HostPolicy.for_bind(host, split_allowed(allowed_hosts))
    run = open_run(run_dir)

    import uvicorn

    from candorlm.device import set_threads
    from candorlm.lm import load
    from candorlm.serve.app import ServeLimits, create_app
    from candorlm.serve.audit import AuditLog
    from candorlm.serve.auth import KeyStore

    keystore = KeyStore(keys) if keys is not None else None
    audit = AuditLog(audit_log if audit_log is not None else default_audit_log(run.path), include_text=audit_text)
    name = model_name or run.path.resolve().name
    sockets = listen(host, port)  # before loading: a port in use fails at once
    try:
        set_threads(None)
        limits = ServeLimits(max_tokens=max_tokens, max_body_bytes=max_body_bytes)
        from candorlm.io.sealed import use_key

        with use_key(key):
            task = task_of(run.path)
        if task in TASK_ROUTES:  # a classifier or a translator: served by its own routes
            from candorlm.serve.tasks import create_task_app
            from candorlm.tasks.predict import load_task

            with use_key(key):
                model = load_task(run.path)
            app = create_task_app(model, model_name=name, keys=keystore, audit=audit, limits=limits, hosts=hosts)
        else:
            lm = load(run.path, device, key)
            app = create_app(lm, model_name=name, keys=keystore, audit=audit, limits=limits, max_batch=max_batch,
                             hosts=hosts)
        where = f"[{host}]" if ":" in host else host
        auth = f"keys from {keys}" if keystore else "NO AUTH: anyone who can reach it" if insecure_no_auth else "no keys"
        log.info("serving model '%s' at http://%s:%d/ (%s; audit log %s; Host headers: %s)", name, where, port, auth,
                 audit.path, hosts.describe())
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()
