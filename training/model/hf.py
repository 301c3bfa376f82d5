"""Hugging Face interop, in one place: config.json and safetensors <-> ModelConfig and Transformer.

What transformers (checked against 5.24) writes for `DeepseekV3ForCausalLM`, and what this maps:
- `config.json` with DeepseekV3Config's fields; RoPE under `rope_parameters` (older files and
  DeepSeek's own release use `rope_scaling` + `rope_theta`; both are read).
- weights prefixed `model.` except `lm_head.weight`; our names are the same without the prefix.
- routed experts one by one on disk: `model.layers.{l}.mlp.experts.{e}.{gate,up,down}_proj.weight`
  (in memory transformers fuses them into `experts.gate_up_proj` (E, 2I, D) and
  `experts.down_proj` (E, D, I); that form is read too). We stack them into (E, out, in) tensors.
- MTP modules are not part of transformers' model. We write them where DeepSeek's release keeps
  them, `model.layers.{num_hidden_layers + k}.*` (`enorm`, `hnorm`, `eh_proj`,
  `shared_head.norm`, and the block's own keys); transformers reports them as unused keys and
  loads the rest. Their copies of the shared embedding and head are not written, and are
  ignored on load.
- FP8 checkpoints (DeepSeek's release): `weight` in float8 with a `weight_scale_inv` per
  128 x 128 block are dequantized on load.

Loading needs only safetensors, not transformers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import ModelConfig, RopeParameters
from .model import Transformer

log = logging.getLogger(__name__)

EXPERT_PROJS = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}  # ours -> transformers
SEEKFLOW_FIELDS = ("bias_update_speed", "seq_aux_loss_alpha", "mtp_loss_weight")


# ---------------------------------------------------------------------------------------------
# config


def config_to_hf(cfg: ModelConfig) -> dict:
    rp = cfg.rope_parameters
    rope = {"rope_type": rp.rope_type, "rope_theta": rp.rope_theta}
    if rp.rope_type == "yarn":
        rope.update(factor=rp.factor, original_max_position_embeddings=rp.original_max_position_embeddings,
                    beta_fast=rp.beta_fast, beta_slow=rp.beta_slow, mscale=rp.mscale,
                    mscale_all_dim=rp.mscale_all_dim)
    dense = cfg.n_routed_experts == 0
    out = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "hidden_act": "silu",
        "attention_bias": False,
        "tie_word_embeddings": False,
        "num_key_value_heads": cfg.num_attention_heads,
        "rope_parameters": rope,
        "topk_method": "noaux_tc",  # DeepSeek's own name for bias-steered routing
        # a dense model: every layer below first_k_dense_replace
        "first_k_dense_replace": cfg.num_hidden_layers if dense else cfg.first_k_dense_replace,
    }
    for name in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "rms_norm_eps", "max_position_embeddings", "initializer_range", "q_lora_rank", "kv_lora_rank",
        "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "rope_interleave", "n_routed_experts",
        "n_shared_experts", "num_experts_per_tok", "n_group", "topk_group", "moe_intermediate_size",
        "scoring_func", "routed_scaling_factor", "norm_topk_prob", "num_nextn_predict_layers",
        *SEEKFLOW_FIELDS,
    ):
        out.setdefault(name, getattr(cfg, name))
    return out


def config_from_hf(d: dict) -> ModelConfig:
    """A transformers / DeepSeek config.json mapping -> ModelConfig; unsupported variants fail."""
    checks = {
        "hidden_act": (d.get("hidden_act", "silu"), "silu"),
        "attention_bias": (bool(d.get("attention_bias", False)), False),
        "num_key_value_heads": (d.get("num_key_value_heads") or d["num_attention_heads"], d["num_attention_heads"]),
    }
    for name, (got, want) in checks.items():
        if got != want:
            raise ValueError(f"config.json: {name} is {got!r}; only {want!r} is supported")
    rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
    rope.setdefault("rope_theta", d.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope.get("truncate", True) is not True:
        raise ValueError("config.json: rope truncate=false is not supported")
    rp = RopeParameters(rope_type=rope_type, rope_theta=float(rope["rope_theta"]))
    if rope_type == "yarn":
        orig = rope.get("original_max_position_embeddings") or d["max_position_embeddings"]
        rp = RopeParameters(
            rope_type="yarn", rope_theta=float(rope["rope_theta"]),
            factor=float(rope.get("factor") or d["max_position_embeddings"] / orig),
            original_max_position_embeddings=int(orig),
            beta_fast=float(rope.get("beta_fast") or 32), beta_slow=float(rope.get("beta_slow") or 1),
            # NOTE: absent mscales mean 0 (transformers' reading), not our defaults of 1
            mscale=float(rope.get("mscale") or 0.0), mscale_all_dim=float(rope.get("mscale_all_dim") or 0.0),
        )
    kwargs = {f: d[f] for f in ModelConfig.__dataclass_fields__ if f in d and f != "rope_parameters"}
    for name, default in (("n_group", 1), ("topk_group", 1), ("first_k_dense_replace", 0), ("norm_topk_prob", False)):
        if kwargs.get(name) is None:
            kwargs[name] = default
    if kwargs.get("v_head_dim") is None:
        kwargs["v_head_dim"] = d["qk_nope_head_dim"]
    kwargs["num_nextn_predict_layers"] = d.get("num_nextn_predict_layers", d.get("num_mtp_layers", 0))
    return ModelConfig(**kwargs, rope_parameters=rp)


# ---------------------------------------------------------------------------------------------
# names


def hf_name(name: str, cfg: ModelConfig) -> str:
    """Our parameter name -> transformers' (experts stay stacked: `...mlp.experts.w1`)."""
    if name == "lm_head.weight":
        return name
    if name.startswith("mtp."):
        _, k, rest = name.split(".", 2)
        rest = rest.removeprefix("block.")
        rest = "shared_head.norm.weight" if rest == "norm.weight" else rest
        return f"model.layers.{cfg.num_hidden_layers + int(k)}.{rest}"
    return "model." + name


def to_hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    cfg, out = model.config, {}
    for name, t in model.state_dict().items():
        key = hf_name(name, cfg)
        base, _, proj = key.rpartition(".")
        if base.endswith(".experts") and proj in EXPERT_PROJS:
            for e in range(t.shape[0]):  # (E, out, in) -> one (out, in) per expert
                out[f"{base}.{e}.{EXPERT_PROJS[proj]}.weight"] = t[e].contiguous()
        else:
            out[key] = t.contiguous()
    return out


class _Checkpoint:
    """Tensors of a safetensors checkpoint (one file or an index of shards), read on demand."""

    def __init__(self, directory: Path):
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (directory / "model.safetensors").is_file():
            with safe_open(directory / "model.safetensors", "pt") as f:
                weight_map = {k: "model.safetensors" for k in f.keys()}
        else:
            raise FileNotFoundError(f"{directory}: no model.safetensors or model.safetensors.index.json")
        self.directory, self.weight_map, self.used = directory, weight_map, set()
        self._files: dict[str, object] = {}
        quant = json.loads((directory / "config.json").read_text()).get("quantization_config") or {}
        self.block = quant.get("weight_block_size", [128, 128])

    def __contains__(self, key: str) -> bool:
        return key in self.weight_map

    def _raw(self, key: str) -> torch.Tensor:
        file = self.weight_map[key]
        if file not in self._files:
            self._files[file] = safe_open(self.directory / file, "pt")
        self.used.add(key)
        return self._files[file].get_tensor(key)

    def get(self, key: str) -> torch.Tensor:
        if key not in self.weight_map:
            raise KeyError(f"{self.directory}: checkpoint has no tensor {key!r}")
        t = self._raw(key)
        if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) and key + "_scale_inv" in self:
            s = self._raw(key + "_scale_inv").float()  # (ceil(out / 128), ceil(in / 128))
            bo, bi = self.block
            s = s.repeat_interleave(bo, 0)[: t.shape[0]].repeat_interleave(bi, 1)[:, : t.shape[1]]
            t = t.float() * s
        return t


def _read_experts(ck: _Checkpoint, base: str, proj: str, E: int) -> torch.Tensor:
    """Stacked (E, out, in) weight of `base` (`model.layers.3.mlp.experts`) from either layout;
    proj is transformers' name (gate_proj, up_proj, down_proj)."""
    if f"{base}.0.{proj}.weight" in ck:  # on-disk layout: one tensor per expert
        return torch.stack([ck.get(f"{base}.{e}.{proj}.weight") for e in range(E)])
    if proj == "down_proj":
        return ck.get(f"{base}.down_proj")
    gate_up = ck.get(f"{base}.gate_up_proj")  # (E, 2I, D): gate rows first, then up
    gate, up = gate_up.chunk(2, dim=1)
    return gate if proj == "gate_proj" else up


# ---------------------------------------------------------------------------------------------
# load and save


def from_pretrained(directory: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                    mtp: bool = True) -> Transformer:
    """Load a DeepseekV3ForCausalLM checkpoint directory into a Transformer (eval mode).

    MTP modules load when `mtp` and the checkpoint has them; otherwise the model has none (a
    transformers checkpoint says num_nextn_predict_layers: 1 by default but stores no weights).
    """
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: expected a transformers checkpoint directory")
    cfg = config_from_hf(json.loads(cfg_path.read_text()))
    ck = _Checkpoint(directory)
    L = cfg.num_hidden_layers
    mtp_prefixes = tuple(f"model.layers.{L + k}." for k in range(cfg.num_nextn_predict_layers))
    have = sum(1 for k in range(cfg.num_nextn_predict_layers) if f"model.layers.{L + k}.eh_proj.weight" in ck)
    if have < cfg.num_nextn_predict_layers or not mtp:
        if mtp and cfg.num_nextn_predict_layers:
            log.info("%s: config lists %d MTP modules, checkpoint stores %d; loading without MTP",
                     directory, cfg.num_nextn_predict_layers, have)
        cfg.num_nextn_predict_layers = 0
    model = Transformer(cfg)
    state = {}
    for name, ours in model.state_dict().items():
        key = hf_name(name, cfg)
        base, _, proj = key.rpartition(".")
        if base.endswith(".experts") and proj in EXPERT_PROJS:
            t = _read_experts(ck, base, EXPERT_PROJS[proj], cfg.n_routed_experts)
        elif key == "lm_head.weight" and key not in ck:  # tied checkpoints store the embedding only
            t = ck.get("model.embed_tokens.weight")
        else:
            t = ck.get(key)
        if t.shape != ours.shape:
            raise ValueError(f"{directory}: {key} has shape {tuple(t.shape)}, config implies {tuple(ours.shape)}")
        state[name] = t
    model.load_state_dict(state, strict=True)
    # MTP copies of the shared embedding and head (and the MTP modules when not loaded) are expected
    unused = [k for k in ck.weight_map if k not in ck.used and not k.endswith("rotary_emb.inv_freq")
              and not (k.startswith(mtp_prefixes) and (not cfg.num_nextn_predict_layers
                                                       or k.endswith(("embed_tokens.weight", "shared_head.head.weight"))))]
    if unused:
        log.warning("%s: %d tensors not used, e.g. %s", directory, len(unused), unused[:5])
    if dtype is not None:
        model.to(dtype)
    return model.to(device).eval()


def save_pretrained(model: Transformer, directory: str | Path, max_shard_bytes: int = 5 * 2**30,
                    **config_extra) -> Path:
    """config.json + model.safetensors (or shards and an index past `max_shard_bytes`).
    `config_extra` adds fields such as bos_token_id / eos_token_id to config.json."""
    cfg = model.config
    if cfg.scoring_func != "sigmoid":
        raise ValueError(f"scoring_func={cfg.scoring_func!r}: transformers' DeepseekV3 supports only 'sigmoid'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu() for k, v in to_hf_state_dict(model).items()}
    hf_cfg = config_to_hf(cfg)
    hf_cfg["dtype"] = str(model.embed_tokens.weight.dtype).removeprefix("torch.")
    hf_cfg.update(config_extra)
    (directory / "config.json").write_text(json.dumps(hf_cfg, indent=2, sort_keys=True) + "\n")
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if total <= max_shard_bytes:
        save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
        return directory
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += nbytes
    n = len(shards)
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file(shard, directory / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return directory
