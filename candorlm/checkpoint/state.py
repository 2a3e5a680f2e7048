"""Single-file checkpoints: weights, optimizer state and trainer state, written atomically.

    checkpoints/step-000100/model.safetensors   weights (safetensors: no code runs on load)
                            optim.safetensors   optimizer tensors (Adam moments, step counts)
                            state.json          step, data cursor, RNG state, optimizer hyper-
                                                parameters, sha256 of both tensor files

A checkpoint is written into a hidden temporary directory and renamed into place only when
complete, so a kill at any moment leaves the previous checkpoint intact and loadable.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from candorlm.checkpoint.retention import STEP_PREFIX, retain
from candorlm.checkpoint.weights import load_weights, save_weights
from candorlm.errors import CandorError
from candorlm.io.files import fsync_dir, sha256_file, swapped_into_place, write_json
from candorlm.io.sealed import is_encrypted, read_bytes, read_text


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> dict[str, str]:
    out = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available():
        out["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)
                                      for s in state["cuda"]])


def save_checkpoint(checkpoints: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], keep: int = 2, keep_best: bool = False) -> Path:
    """Write checkpoints/step-NNNNNN atomically, then apply the retention policy (`retain`)."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    final = checkpoints / f"{STEP_PREFIX}{step:06d}"
    with swapped_into_place(final) as tmp:
        save_weights(model, tmp / "model.safetensors")
        tensors, optim_meta = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optim.safetensors"))
        full_state = dict(state, step=step, optimizer=optim_meta, rng=rng_state(), sha256={
            name: sha256_file(tmp / name) for name in ("model.safetensors", "optim.safetensors")})
        write_json(tmp / "state.json", full_state)
    fsync_dir(checkpoints)
    retain(checkpoints, keep, keep_best)
    return final


def verified_state(checkpoint: Path, verify: bool = True) -> dict[str, Any]:
    """state.json of a checkpoint (of either format) whose files all match their recorded sha256
    (verify=False: trusted without hashing them)."""
    state_file = checkpoint / "state.json"
    if not state_file.is_file():
        raise CandorError(f"checkpoint {checkpoint} is incomplete (no state.json); delete it to resume from an earlier one")
    try:
        state = json.loads(read_text(state_file))  # an encrypted run's too (with the key in force)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CandorError(f"{state_file} is not valid JSON ({exc}); the checkpoint is damaged") from None
    for name, digest in state.get("sha256", {}).items() if verify else ():
        file = checkpoint / name
        if not file.is_file():
            raise CandorError(f"checkpoint {checkpoint} is missing {name}; delete the checkpoint to resume from an "
                              f"earlier one")
        if _plain_sha256(file) != digest:
            raise CandorError(f"checkpoint file {file} is corrupt (its sha256 does not match state.json); "
                              f"delete {checkpoint} to resume from an earlier checkpoint")
    return state


def _plain_sha256(file: Path) -> str:
    """The sha256 state.json records: of the file as saved, so of the plaintext of an encrypted copy."""
    if is_encrypted(file):
        return hashlib.sha256(read_bytes(file)).hexdigest()
    return sha256_file(file)


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Restore weights (and optimizer) from a checkpoint; return its state. Damage is a CandorError."""
    state = verified_state(path)
    load_weights(model, path / "model.safetensors")
    if optimizer is not None:
        try:
            tensors = load_file(str(path / "optim.safetensors"))
        except SafetensorError as exc:
            raise CandorError(f"{path / 'optim.safetensors'} is corrupt ({exc})") from None
        _restore_optimizer(optimizer, tensors, state["optimizer"])
    return state
