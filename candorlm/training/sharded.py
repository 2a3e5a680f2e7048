"""Checkpoints of runs trained by several processes, and any checkpoint loaded at any world size.

Two formats live side by side under checkpoints/step-NNNNNN/:

- single-file (one process, or DDP, whose ranks hold identical copies): rank 0 writes
  model.safetensors, optim.safetensors and state.json exactly as training/checkpoint.py does.
- sharded (FSDP): every rank writes its own pieces with torch.distributed.checkpoint (DCP):

      model/shard-0000R-model-00001-of-00001.safetensors   rank R-1's pieces of every weight
      optim/shard-0000R-model-00001-of-00001.safetensors   its pieces of the Adam moments
      state.json                                           step, data cursor, RNG, optimizer
                                                           settings, world size, sha256 of every file

  DCP's Hugging Face storage keeps the pieces in safetensors files, each piece's offset in the
  file's JSON header, so nothing is pickled (DCP's default storage pickles its metadata).

Either format loads at any world size and with any strategy: DCP reshards on load (2 ranks to 1,
1 to 4), and a single-file checkpoint loads into FSDP as a full state dict that each rank cuts
down to its shard. Saving is atomic as before: a hidden temporary directory, renamed into place
by rank 0 once every rank has written. The final model.safetensors is always a plain
single-file model.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from candorlm.errors import CandorError
from candorlm.io.files import fsync_dir, sha256_file, write_json
from candorlm.training.checkpoint import (STEP_PREFIX, load_checkpoint, load_weights, retain, rng_state,
                                          save_checkpoint, save_weights, verified_state)
from candorlm.training.distributed import World

# Optimizer settings that are the arithmetic (restored); the rest are implementation choices of
# the optimizer built for this run (fused, foreach, ...), which stay as built.
_HYPER = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "initial_lr")


def is_sharded(checkpoint: Path) -> bool:
    return (checkpoint / "model").is_dir()


def _hf_storage() -> tuple[Any, Any]:
    """DCP's safetensors writer and reader (torch 2.9 or later, for save_distributed)."""
    try:
        from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
    except ImportError:
        raise CandorError(f"sharded (FSDP) checkpoints need torch 2.9 or later; this is torch {torch.__version__}: "
                          f"upgrade torch, or train with --strategy ddp") from None
    return HuggingFaceStorageWriter, HuggingFaceStorageReader


# ---------------------------------------------------------------- saving


def save_any_checkpoint(world: World, checkpoints: Path, step: int, model: nn.Module,
                        optimizer: torch.optim.Optimizer, state: dict[str, Any], keep: int = 2,
                        keep_best: bool = False) -> Path:
    """Save the run's checkpoint for `step` in the format its strategy calls for (all ranks call this)."""
    state = dict(state, world_size=world.world_size, strategy=world.strategy)
    final = checkpoints / f"{STEP_PREFIX}{step:06d}"
    if world.strategy == "fsdp" and world.distributed:
        save_sharded(world, checkpoints, step, model, optimizer, state, keep, keep_best)
    else:
        world.on_main(lambda: save_checkpoint(checkpoints, step, model, optimizer, state, keep=keep,
                                              keep_best=keep_best))
    return final


def save_sharded(world: World, checkpoints: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                 state: dict[str, Any], keep: int = 2, keep_best: bool = False) -> Path:
    import torch.distributed.checkpoint as dcp

    HuggingFaceStorageWriter, _ = _hf_storage()
    final = checkpoints / f"{STEP_PREFIX}{step:06d}"
    tmp = checkpoints / f".{final.name}.tmp-sharded"  # one name every rank knows

    def prepare() -> None:
        checkpoints.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a save that was killed
        tmp.mkdir()

    world.on_main(prepare)
    model_tensors, optim_tensors, optim_meta = flat_state(model, optimizer)
    try:
        for name, tensors in (("model", model_tensors), ("optim", optim_tensors)):
            dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(tmp / name), save_distributed=True),
                     process_group=world._control)
    except BaseException:
        world.on_main(lambda: shutil.rmtree(tmp, ignore_errors=True))
        raise

    def finish() -> None:
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*.safetensors"))
        full_state = dict(state, step=step, format="sharded", optimizer=optim_meta, rng=rng_state(),
                          sha256={name: sha256_file(tmp / name) for name in files})
        write_json(tmp / "state.json", full_state)
        for sub in ("model", "optim", "."):
            fsync_dir(tmp / sub)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(checkpoints)
        retain(checkpoints, keep, keep_best)

    world.on_main(finish)
    return final


def export_weights(world: World, model: nn.Module, path: Path, plain: Callable[[], nn.Module]) -> None:
    """Write the final model.safetensors, a plain single-file model, atomically (all ranks call this).

    Under FSDP the full weights are gathered to rank 0's CPU and saved from a plain copy of the
    model made by `plain()`, so that the file is byte-for-byte what a single process writes."""
    full: dict[str, torch.Tensor] | None = None
    if world.strategy == "fsdp" and world.distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def write() -> None:
        source = model
        if full is not None:
            source = plain()
            source.load_state_dict(full)
        tmp = path.with_suffix(".tmp")
        save_weights(source, tmp)
        tmp.replace(path)

    world.on_main(write)


# ---------------------------------------------------------------- loading


def load_any_checkpoint(world: World, checkpoint: Path, model: nn.Module,
                        optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights and optimizer from a checkpoint of either format, saved at any world size
    with any strategy; returns its state. Every rank calls this."""
    if is_sharded(checkpoint):
        return load_sharded(world, checkpoint, model, optimizer)
    if world.strategy == "fsdp" and world.distributed:
        return load_full_into_sharded(world, checkpoint, model, optimizer)
    return load_checkpoint(checkpoint, model, optimizer)


def load_sharded(world: World, checkpoint: Path, model: nn.Module,
                 optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    _, HuggingFaceStorageReader = _hf_storage()

    state = verified_state(checkpoint)
    model_tensors, optim_tensors, _ = flat_state(model, optimizer)
    parts = [("model", model_tensors)] + ([("optim", optim_tensors)] if optimizer is not None else [])
    with warnings.catch_warnings():
        # In one process DCP says it assumes one process; that is what we mean.
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
        for name, tensors in parts:
            try:
                dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(checkpoint / name)),
                         process_group=world._control, no_dist=not world.distributed)
            except (RuntimeError, KeyError, SafetensorError) as exc:
                raise CandorError(f"checkpoint {checkpoint / name} does not fit this model ({exc}); resume with the "
                                  f"model config it was saved with") from None
    msd, osd = _unflatten(model, model_tensors, optim_tensors, state.get("optimizer", {}), optimizer)
    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, msd)
    else:
        set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd)
    return state


def load_full_into_sharded(world: World, checkpoint: Path, model: nn.Module,
                           optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A single-file checkpoint (saved by 1 process or DDP) into an FSDP-sharded model: every rank
    reads the full tensors and keeps its own shard of them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state = verified_state(checkpoint)
    try:
        weights = load_file(str(checkpoint / "model.safetensors"))
        moments = load_file(str(checkpoint / "optim.safetensors"))
    except SafetensorError as exc:
        raise CandorError(f"checkpoint {checkpoint} is corrupt ({exc})") from None
    groups = _alias_groups(model)
    for names in groups:  # tied weights are stored once, under one of their names
        present = [n for n in names if n in weights]
        if present:
            for n in names:
                weights[n] = weights[present[0]]
    index_to_name = _optimizer_names(model, optimizer)
    per_param: dict[str, dict[str, Any]] = {}
    for key, value in moments.items():
        idx, what = key.split(".", 1)
        per_param.setdefault(index_to_name[int(idx)], {})[what] = value
    for key, value in state["optimizer"]["scalars"].items():
        idx, what = key.split(".", 1)
        per_param.setdefault(index_to_name[int(idx)], {})[what] = value
    osd = {"state": per_param, "param_groups": _param_groups(optimizer, model, state["optimizer"]["param_groups"])}
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=osd,
                   options=StateDictOptions(full_state_dict=True))
    return state


def load_checkpoint_weights(model: nn.Module, checkpoint: Path) -> None:
    """Weights only, from a checkpoint of either format, into a plain model in this process."""
    if is_sharded(checkpoint):
        load_sharded(World(), checkpoint, model)
    else:
        load_weights(model, checkpoint / "model.safetensors")


# ---------------------------------------------------------------- state dicts as flat tensors


def _alias_groups(model: nn.Module) -> list[list[str]]:
    """Names that share one parameter (tied embeddings), first name first."""
    by_param: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_param.setdefault(id(p), []).append(name)
    return [names for names in by_param.values() if len(names) > 1]


def flat_state(model: nn.Module, optimizer: torch.optim.Optimizer | None
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """DCP's view of the model and optimizer as flat dicts of tensors (sharded DTensors under
    FSDP, plain tensors otherwise), plus the optimizer's non-tensor settings for state.json.

    Keys: `<fqn>` for weights (a tied weight once), `<fqn>.<key>` for optimizer state. Tensors
    are the live ones: DCP loads into them in place."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        msd, osd = get_model_state_dict(model), {"state": {}, "param_groups": []}
    else:
        msd, osd = get_state_dict(model, optimizer)
    duplicates = {name for names in _alias_groups(model) for name in names[1:]}
    model_tensors = {k: v for k, v in msd.items() if k not in duplicates}
    optim_tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for fqn, entry in osd["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                optim_tensors[f"{fqn}.{key}"] = value
            else:
                scalars[f"{fqn}.{key}"] = value
    groups = [{k: v for k, v in g.items() if k != "params"} for g in osd["param_groups"]]
    return model_tensors, optim_tensors, {"param_groups": groups, "scalars": scalars}


def _unflatten(model: nn.Module, model_tensors: dict[str, torch.Tensor], optim_tensors: dict[str, torch.Tensor],
               meta: dict[str, Any], optimizer: torch.optim.Optimizer | None) -> tuple[dict[str, Any], dict[str, Any]]:
    msd = dict(model_tensors)
    for names in _alias_groups(model):
        for name in names[1:]:
            msd[name] = msd[names[0]]
    if optimizer is None:
        return msd, {}
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    osd = get_optimizer_state_dict(model, optimizer)
    state: dict[str, dict[str, Any]] = {}
    for fqn, entry in osd["state"].items():
        state[fqn] = {key: optim_tensors.get(f"{fqn}.{key}", value) for key, value in entry.items()}
    for key, value in meta.get("scalars", {}).items():
        fqn, what = key.rsplit(".", 1)
        state.setdefault(fqn, {})[what] = value
    groups = osd["param_groups"]
    for group, saved in zip(groups, meta.get("param_groups", [])):
        group.update({k: v for k, v in saved.items() if k in _HYPER})
    return msd, {"state": state, "param_groups": groups}


def _optimizer_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[int, str]:
    """The optimizer's parameter index (its state_dict numbering) -> the parameter's name."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [p for group in optimizer.param_groups for p in group["params"]]
    return {i: names[id(p)] for i, p in enumerate(order)}


def _param_groups(optimizer: torch.optim.Optimizer, model: nn.Module, saved: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for group, old in zip(optimizer.param_groups, saved):
        entry = {k: v for k, v in group.items() if k != "params"}
        entry.update({k: v for k, v in old.items() if k in _HYPER})
        entry["params"] = [names[id(p)] for p in group["params"]]
        groups.append(entry)
    return groups
