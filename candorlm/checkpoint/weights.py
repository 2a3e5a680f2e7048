"""Model weights as safetensors files: written whole, read plain or encrypted, never pickle."""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from candorlm.errors import CandorError
from candorlm.io.files import atomic_path
from candorlm.io.sealed import is_encrypted, read_bytes


def save_weights(model: nn.Module, path: Path) -> None:
    """Write `path` atomically (a crash leaves the old file or the new one, never half)."""
    # save_model drops the duplicate of tied embeddings; save_file would refuse shared tensors.
    with atomic_path(path) as tmp:
        save_model(model, str(tmp))


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
        hint = ("; they are a fine-tuned task model's (a backbone and a head), so the run's task.json is missing or "
                "damaged: restore the run from a backup" if any(k.startswith("backbone.") for k in unexpected) else "")
        raise CandorError(f"{path} does not match the model: missing {sorted(missing)[:5]}, unexpected "
                          f"{sorted(unexpected)[:5]}{hint}")


def _load_encrypted_weights(model: nn.Module, path: Path) -> tuple[list[str], list[str]]:
    # Decrypted in memory, never to disk. Tied weights are stored once (save_model), so a name
    # the file lacks is not missing when it shares its tensor with one the file has.
    from safetensors.torch import load as load_safetensors

    tensors = load_safetensors(read_bytes(path))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    state = model.state_dict()
    loaded = {state[name].data_ptr() for name in tensors if name in state}
    return [name for name in missing if state[name].data_ptr() not in loaded], list(unexpected)
