"""Checkpoints: weights, optimizer state and trainer state, written atomically.

    checkpoints/step-000100/model.safetensors   weights (safetensors: no code runs on load)
                            optim.safetensors   optimizer tensors (Adam moments, step counts)
                            state.json          step, data cursor, RNG state, optimizer hyper-
                                                parameters, sha256 of both tensor files

A checkpoint is written into a hidden temporary directory and renamed into place only when
complete, so a kill at any moment leaves the previous checkpoint intact and loadable.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from candorlm.errors import CandorError
from candorlm.io.files import fsync_dir, read_json, sha256_file, swapped_into_place, write_json
from candorlm.io.sealed import is_encrypted, read_bytes

STEP_PREFIX = "step-"


def save_weights(model: nn.Module, path: Path) -> None:
    # save_model drops the duplicate of tied embeddings; save_file would refuse shared tensors.
    save_model(model, str(path))


def load_weights(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise CandorError(f"weights not found: {path}")
    try:
        if is_encrypted(path):
            missing, unexpected = _load_encrypted_weights(model, path)
        else:
            missing, unexpected = load_model(model, str(path), strict=False)
    except SafetensorError as exc:
        raise CandorError(f"{path} is not a readable safetensors file ({exc}); it is corrupt, truncated, "
                          f"or not safetensors at all (candorlm never loads pickle)") from None
    except RuntimeError as exc:
        raise CandorError(f"{path} does not fit this model's shapes ({exc})") from None
    if missing or unexpected:
        raise CandorError(f"{path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _load_encrypted_weights(model: nn.Module, path: Path) -> tuple[list[str], list[str]]:
    # Decrypted in memory, never to disk. Tied weights are stored once (save_model), so a name
    # the file lacks is not missing when it shares its tensor with one the file has.
    from safetensors.torch import load as load_safetensors

    tensors = load_safetensors(read_bytes(path))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    state = model.state_dict()
    loaded = {state[name].data_ptr() for name in tensors if name in state}
    return [name for name in missing if state[name].data_ptr() not in loaded], list(unexpected)


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
        fsync_dir(tmp)
    fsync_dir(checkpoints)
    retain(checkpoints, keep, keep_best)
    return final


def retain(checkpoints: Path, keep_last: int, keep_best: bool) -> list[Path]:
    """Delete all checkpoints but the newest `keep_last` and, with keep_best, the one with the
    lowest validation loss (state.json's val_loss); returns those kept, oldest first."""
    found = list_checkpoints(checkpoints)
    keep = set(found[-keep_last:])
    if keep_best:
        best = best_checkpoint(checkpoints)
        if best is not None:
            keep.add(best)
    for old in found:
        if old not in keep:
            shutil.rmtree(old, ignore_errors=True)
    return [p for p in found if p in keep]


def best_checkpoint(checkpoints: Path) -> Path | None:
    """The complete checkpoint with the lowest recorded validation loss (None if none has one)."""
    scored = []
    for path in list_checkpoints(checkpoints):
        try:
            loss = read_json(path / "state.json").get("val_loss")
        except CandorError:
            continue  # unreadable state: not a candidate for best
        if isinstance(loss, (int, float)):
            scored.append((loss, path))
    return min(scored, key=lambda t: t[0])[1] if scored else None


def list_checkpoints(checkpoints: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories of interrupted saves are ignored)."""
    if not checkpoints.is_dir():
        return []
    found = [p for p in checkpoints.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)
             and p.name[len(STEP_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def latest_checkpoint(checkpoints: Path) -> Path | None:
    found = list_checkpoints(checkpoints)
    return found[-1] if found else None


def verified_state(checkpoint: Path) -> dict[str, Any]:
    """state.json of a checkpoint (of either format) whose files all match their recorded sha256."""
    state_file = checkpoint / "state.json"
    if not state_file.is_file():
        raise CandorError(f"checkpoint {checkpoint} is incomplete (no state.json); delete it to resume from an earlier one")
    state = read_json(state_file)
    for name, digest in state.get("sha256", {}).items():
        file = checkpoint / name
        if not file.is_file():
            raise CandorError(f"checkpoint {checkpoint} is missing {name}; delete the checkpoint to resume from an "
                              f"earlier one")
        if sha256_file(file) != digest:
            raise CandorError(f"checkpoint file {file} is corrupt (its sha256 does not match state.json); "
                              f"delete {checkpoint} to resume from an earlier checkpoint")
    return state


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
