"""Serving: an OpenAI-compatible HTTP API with access control, an audit log and a chat page.

    from candorlm.serve import serve, add_key
    key = add_key("keys.json", "alice", scopes="generate,explain")
    serve("runs/pd", keys="keys.json")              # http://127.0.0.1:8000/

Modules: app.py (endpoints), engine.py (continuous batching), auth.py (keys, limits),
gate.py (the HTTP checks), audit.py, generation.py (OpenAI response shapes), chat.py (chat
prompt format), why.py (attribution and attention), server.py (Uvicorn), ui/ (the page).
"""

from candorlm.serve.auth import add_key, list_keys, revoke_key
from candorlm.serve.server import serve

__all__ = ["add_key", "list_keys", "revoke_key", "serve"]
