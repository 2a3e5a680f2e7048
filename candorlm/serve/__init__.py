"""Serving: an OpenAI-compatible HTTP API with access control, an audit log and a chat page.

    from candorlm.serve import serve, add_key
    key = add_key("keys.json", "alice", scopes="generate,explain")
    serve("runs/pd", keys="keys.json")              # http://127.0.0.1:8000/

Modules: app.py (endpoints), engine.py (continuous batching), auth.py (keys, limits),
gate.py (the key and body checks), hosts.py (the Host check against DNS rebinding), audit.py,
errors.py and handlers.py (OpenAI's error object; nothing internal reaches a caller),
openapi.py (the schema and its limits), schemas.py (request and response bodies),
generation.py (OpenAI response shapes), chat.py (chat prompt format), why.py (attribution and
attention), server.py (settings checked, then Uvicorn), ui/ (the page).
"""

from candorlm.serve.auth import add_key, list_keys, revoke_key
from candorlm.serve.server import serve

__all__ = ["add_key", "list_keys", "revoke_key", "serve"]
