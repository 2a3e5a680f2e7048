"""Saving and loading what training produces, and the one way to open a run.

- `run`: `load_run(path)`, which every reader (generation, tasks, explain, serve) uses: final
  weights or the newest checkpoint (single-file or sharded), checked against the run's manifest.
- `weights`: model.safetensors files. `state`: single-file checkpoints (weights, optimizer,
  trainer state). `sharded`: FSDP checkpoints, and either format at any world size.
  `retention`: which checkpoints exist and which are kept.

Layering: below training and inference, above model, data and io (docs/architecture.md).
"""
