"""The bottom layer: bytes in and out of files, safely. It imports nothing from candorlm but
`errors`, so every layer above may use it.

- `files`: atomic writes, JSON, hashing, directory fsync, build-then-swap.
- `sealed`: files that may be encrypted at rest (the format, the ambient key, plain-or-encrypted reads).
"""
