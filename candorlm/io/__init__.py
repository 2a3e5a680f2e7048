"""The bottom layer: bytes in and out of files, safely. It imports nothing from candorlm but
`errors`, so every layer above may use it.

- `files`: atomic writes, JSON, hashing, directory fsync, build-then-swap, candorlm's temporary
  names, removing what killed commands left, SIGTERM that cleans up.
- `sealed`: files that may be encrypted at rest (the format, the ambient key, plain-or-encrypted reads).
- `manifest`: a directory's SHA256SUMS: writing it, checking it, checking the files a load reads.
- `outputs`: markers on candorlm's output and the one check behind every --overwrite.
"""
