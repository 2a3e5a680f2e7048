"""Serving: the HTTP API and chat page, and the API keys that guard it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from candorlm.cli.extras import needs
from candorlm.cli.options import KeyFile, NoVerify, options_from, reading_with

PANEL = "Serving"

Keys = typer.Option(..., "--keys", help="Keys file.")


@needs("serve")
@options_from("candorlm.serve.server:serve", skip=("key",), flags={"keys": "--keys", "max_body_bytes": "--max-body"})
def serve(key_file: KeyFile = None, no_verify: NoVerify = False, **options: Any) -> None:
    """Serve a run: OpenAI-compatible API (completions, chat, streaming), /v1/explain, and a chat page at /.

    Example: candorlm serve runs/pd --port 8000 --keys keys.json
    """
    from candorlm.serve.server import serve as run_server

    with reading_with(key_file, no_verify):
        run_server(**options)


def add_key(
    name: str = typer.Argument(..., help="A name for the key's holder (letters, digits, '-', '_', '.')."),
    keys: Path = typer.Option(..., "--keys", help="Keys file (created if missing)."),
    scopes: str = typer.Option("generate", help="Comma-separated: generate, explain, admin."),
    rate_limit: int = typer.Option(60, help="Requests per minute (0: no limit)."),
    token_budget: int = typer.Option(0, help="Prompt plus completion tokens per hour (0: no limit)."),
) -> None:
    """Create an API key; prints it once (only a salted hash is stored).

    Example: candorlm keys add alice --scopes generate,explain --keys keys.json
    """
    from candorlm.progress import console
    from candorlm.serve.auth import add_key as run_add_key

    key = run_add_key(keys, name, scopes, requests_per_minute=rate_limit or None, tokens_per_hour=token_budget or None)
    sys.stdout.write(key + "\n")
    console.print(f"key '{name}' added to {keys}; it is shown only now, so keep it somewhere safe")


def list_keys(keys: Path = Keys) -> None:
    """List keys: name, scopes, limits, creation time (never the keys).

    Example: candorlm keys list --keys keys.json
    """
    from candorlm.serve.auth import list_keys as read_keys

    for r in read_keys(keys):
        rate = f"{r.requests_per_minute}/min" if r.requests_per_minute else "no rate limit"
        budget = f"{r.tokens_per_hour:,} tokens/h" if r.tokens_per_hour else "no token budget"
        sys.stdout.write(f"{r.name}\t{','.join(r.scopes)}\t{rate}\t{budget}\t{r.created}\n")


def revoke_key(
    name: str = typer.Argument(..., help="Name of the key to revoke."),
    keys: Path = Keys,
) -> None:
    """Revoke a key; a running server refuses it from its next request.

    Example: candorlm keys revoke alice --keys keys.json
    """
    from candorlm.progress import console
    from candorlm.serve.auth import revoke_key as run_revoke

    run_revoke(keys, name)
    console.print(f"revoked key '{name}'")
