"""The bottom layer: bytes in and out of files, safely. It imports nothing from candorlm but
`errors`, so every layer above may use it.

- `files`: atomic writes, JSON, hashing, directory fsync, build-then-swap, candorlm's temporary
  names, removing what killed commands left, SIGTERM that cleans up.
- `keys`: keys for encryption at rest (key files must be private), and the ambient key readers use.
- `sealed`: files that may be encrypted at rest (the format, each tree member bound to its path,
  plain-or-encrypted reads).
- `sealedtree`: an encrypted tree's keyed manifest (CANDORLM-SEALED.json): nothing added, missing,
  swapped, renamed or rolled back.
- `manifest`: a directory's SHA256SUMS: writing it, checking it, checking the files a load reads.
- `outputs`: markers on candorlm's output and the one check behind every --overwrite.
"""
