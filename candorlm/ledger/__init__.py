"""The cost and compute ledger: FLOPs, the device's measured peak, and what a run cost."""
