"""Export to, and import from, the Hugging Face Llama format.

An exported directory holds `config.json` (LlamaConfig), `model.safetensors`, `tokenizer.json`
with `tokenizer_config.json` and `special_tokens_map.json`, and `generation_config.json`:
`transformers.LlamaForCausalLM.from_pretrained(DIR, local_files_only=True)` and
`AutoTokenizer.from_pretrained(DIR, local_files_only=True)` load it, and compute the same logits as candorlm (a test checks this). Import reads the same
layout (one safetensors file, or shards with an index) into a candorlm run directory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from candorlm.config import ModelConfig, RunConfig
from candorlm.errors import CandorError
from candorlm.checkpoint.weights import save_weights
from candorlm.io.files import atomic_write_text, swapped_into_place, write_json
from candorlm.io.manifest import write_manifest
from candorlm.io.outputs import claim_dir, write_marker
from candorlm.lm import LanguageModel
from candorlm.model import DecoderLM
from candorlm.rundir import RunDir, foreign_entries, looks_like_old_run
from candorlm.tokenizer import CHAT_ROLES, CHAT_TEMPLATE, Tokenizer

# candorlm parameter name -> Hugging Face Llama name; {i} is the layer index.
_NAMES = {
    "tok_emb.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
    "blocks.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blocks.{i}.mlp_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blocks.{i}.attn.q_proj.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blocks.{i}.attn.k_proj.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blocks.{i}.attn.v_proj.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blocks.{i}.attn.o_proj.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blocks.{i}.mlp.gate_proj.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blocks.{i}.mlp.up_proj.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blocks.{i}.mlp.down_proj.weight": "model.layers.{i}.mlp.down_proj.weight",
}


def _rename(name: str, table: dict[str, str]) -> str:
    for src, dst in table.items():
        pattern = "^" + re.escape(src).replace(r"\{i\}", r"(\d+)") + "$"
        m = re.match(pattern, name)
        if m:
            return dst.replace("{i}", m.group(1)) if m.groups() else dst
    raise CandorError(f"no Hugging Face name for parameter '{name}'")


def llama_config(cfg: ModelConfig, tokenizer: Tokenizer) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ff_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
        "torch_dtype": "float32",
    }


def export_hf(run_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write a run as a Hugging Face Llama model directory.

    Args:
        run_dir: Run directory.
        out: Directory to write.
        overwrite: Replace an export candorlm wrote in --out.
    """
    out = Path(out)
    # No rule for unmarked exports: their file names are the ones any `save_pretrained` writes, so a
    # user's own Hugging Face model would pass it.
    claim_dir(out, "hf-export", overwrite=overwrite, inputs=[run_dir])
    lm = LanguageModel.load(run_dir, device="cpu")
    cfg = lm.model.cfg
    if cfg.mlp != "swiglu":
        raise CandorError(f"only SwiGLU models export to the Llama format; this one uses mlp = '{cfg.mlp}'")
    if cfg.qk_norm:
        raise CandorError("this model normalizes queries and keys (model.qk_norm), which LlamaForCausalLM cannot "
                          "express; its weights stay in RUN/model.safetensors (candorlm's format)")
    if cfg.value_embeds:
        raise CandorError("this model has value embeddings (model.value_embeds), which LlamaForCausalLM cannot "
                          "express; its weights stay in RUN/model.safetensors (candorlm's format)")
    if cfg.logit_softcap:
        raise CandorError("this model soft-caps its logits (model.logit_softcap), which LlamaForCausalLM cannot "
                          "express; its weights stay in RUN/model.safetensors (candorlm's format)")
    with swapped_into_place(out) as tmp:
        _write_hf(lm, tmp)
        write_marker(tmp, "hf-export", "candorlm export", source=str(run_dir))
    return out


def _write_hf(lm: LanguageModel, out: Path) -> None:
    cfg = lm.model.cfg
    tensors = {}
    for name, tensor in lm.model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue  # tied: transformers rebuilds it from embed_tokens
        tensors[_rename(name, _NAMES)] = tensor.detach().contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_json(out / "config.json", llama_config(cfg, lm.tokenizer))
    tok = lm.tokenizer
    # candorlm never writes its markers (pad, bos, chat roles...) in plain text: nor does transformers.
    suppress = sorted(i for i in tok.special_ids if i != tok.eos_id)
    write_json(out / "generation_config.json", {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id,
                                                "pad_token_id": tok.pad_id, "suppress_tokens": suppress})
    lm.tokenizer.save(out / "tokenizer.json")
    add_bos = tok.bos_id is not None
    if add_bos:  # candorlm starts every prompt with <|bos|>: so does the exported tokenizer
        _add_bos_post_processor(out / "tokenizer.json", tok.specials["bos"], tok.bos_id)
    specials = {f"{role}_token": token for role, token in tok.specials.items()
                if role in ("bos", "eos", "pad", "unk", "mask", "sep")}
    write_json(out / "special_tokens_map.json", specials)
    write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.max_seq_len,
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        **({"chat_template": CHAT_TEMPLATE} if all(tok.ids.get(r) is not None for r in (*CHAT_ROLES, "end")) else {}),
        **specials,
    })


def _add_bos_post_processor(path: Path, bos: str, bos_id: int) -> None:
    """Make `tokenizer(text)` (add_special_tokens=True, the default, as pipelines call it) give
    <|bos|> + the text's tokens, as candorlm's prompts are; add_special_tokens=False stays plain."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }
    atomic_write_text(path, json.dumps(data, ensure_ascii=False))


def _read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    single = hf_dir / "model.safetensors"
    index = hf_dir / "model.safetensors.index.json"
    try:
        if single.is_file():
            return load_file(str(single))
        if index.is_file():
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            tensors: dict[str, torch.Tensor] = {}
            for name in files:
                tensors.update(load_file(str(hf_dir / name)))
            return tensors
    except SafetensorError as exc:
        raise CandorError(f"{hf_dir}: a safetensors file is corrupt ({exc})") from None
    if any(hf_dir.glob("*.bin")) or any(hf_dir.glob("*.pt")):
        raise CandorError(f"{hf_dir} holds only pickle weights (.bin/.pt); candorlm loads safetensors only. "
                          f"Convert them with a tool you trust.")
    raise CandorError(f"{hf_dir} has no model.safetensors")


def import_hf(hf_dir: str | Path, out: str | Path, overwrite: bool = False) -> RunDir:
    """Make a candorlm run directory from a Hugging Face Llama model directory.

    Args:
        hf_dir: Hugging Face Llama model directory.
        out: Run directory to create.
        overwrite: Replace a run candorlm wrote in --out.
    """
    hf_dir, out = Path(hf_dir), Path(out)
    claim_dir(out, "run", overwrite=overwrite, inputs=[hf_dir], legacy=looks_like_old_run,
              foreign=foreign_entries)
    config_file = hf_dir / "config.json"
    if not config_file.is_file():
        raise CandorError(f"{hf_dir} is not a Hugging Face model directory (no config.json)")
    hf = json.loads(config_file.read_text(encoding="utf-8"))
    if hf.get("model_type") != "llama":
        raise CandorError(f"{hf_dir} holds a '{hf.get('model_type')}' model; only 'llama' imports")
    unsupported = [k for k in ("attention_bias", "mlp_bias") if hf.get(k)]
    if hf.get("rope_scaling") or (hf.get("rope_parameters") or {}).get("rope_type", "default") != "default":
        unsupported.append("rope scaling")
    if hf.get("hidden_act", "silu") != "silu":
        unsupported.append(f"hidden_act={hf['hidden_act']}")
    if unsupported:
        raise CandorError(f"{hf_dir}: unsupported Llama options: {', '.join(unsupported)}")
    n_heads = hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, hf["hidden_size"] // n_heads):
        raise CandorError(f"{hf_dir}: head_dim {hf['head_dim']} differs from hidden_size/num_attention_heads")
    theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    cfg = ModelConfig(vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
                      n_heads=n_heads, n_kv_heads=hf.get("num_key_value_heads") or n_heads,
                      d_ff=hf["intermediate_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
                      rope_theta=theta, norm_eps=hf.get("rms_norm_eps", 1e-6),
                      tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
    tokenizer = Tokenizer.load(hf_dir / "tokenizer.json")
    tokenizer.hf.post_processor = None  # candorlm adds <|bos|> itself where a prompt needs it
    model = DecoderLM(cfg)
    reverse = {v: k for k, v in _NAMES.items()}
    tensors = _read_hf_weights(hf_dir)
    state = {_rename(name, reverse): t for name, t in tensors.items() if not name.endswith("rotary_emb.inv_freq")}
    if cfg.tie_embeddings:
        state.setdefault("lm_head.weight", state["tok_emb.weight"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CandorError(f"{hf_dir}: weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with swapped_into_place(out) as tmp:
        run = RunDir(tmp)
        save_weights(model, run.weights)
        tokenizer.save(run.tokenizer)
        atomic_write_text(run.config, RunConfig(model=cfg).to_toml())
        write_manifest(tmp)  # SHA256SUMS: loading the run checks it
        write_marker(tmp, "run", "candorlm import", source=str(hf_dir))
    return RunDir(out)

