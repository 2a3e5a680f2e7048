"""`candorlm serve`: load a run, check that it is safe to listen where asked, run Uvicorn."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from candorlm.errors import CandorError

if TYPE_CHECKING:
    from candorlm.io.sealed import Key

log = logging.getLogger(__name__)


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


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, keys: str | Path | None = None,
          insecure_no_auth: bool = False, audit_log: str | Path | None = None, audit_text: bool = False,
          max_batch: int = 16, model_name: str | None = None, device: str = "auto",
          max_tokens: int = 1024, max_body_bytes: int = 1 << 20, key: Key | None = None) -> None:
    """Serve a run over HTTP until interrupted (see candorlm/serve/app.py for the endpoints).
    An encrypted run (`candorlm encrypt`) is read with `key`, or the key in CANDORLM_KEY."""
    check_binding(host, keys, insecure_no_auth)
    import uvicorn

    from candorlm.device import set_threads
    from candorlm.lm import load
    from candorlm.serve.app import ServeLimits, create_app
    from candorlm.serve.audit import AuditLog
    from candorlm.serve.auth import KeyStore

    keystore = KeyStore(keys) if keys is not None else None
    set_threads(None)
    lm = load(run_dir, device, key)
    name = model_name or Path(run_dir).resolve().name
    audit = AuditLog(audit_log if audit_log is not None else Path(run_dir) / "audit.jsonl", include_text=audit_text)
    limits = ServeLimits(max_tokens=max_tokens, max_body_bytes=max_body_bytes)
    app = create_app(lm, model_name=name, keys=keystore, audit=audit, limits=limits, max_batch=max_batch)
    where = f"[{host}]" if ":" in host else host
    auth = f"keys from {keys}" if keystore else "NO AUTH: anyone who can reach it" if insecure_no_auth else "no keys"
    log.info("serving model '%s' at http://%s:%d/ (%s; audit log %s)", name, where, port, auth, audit.path)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
