"""Hugging Face interop: our Transformer and transformers' DeepseekV3ForCausalLM agree, both ways.

The tiny config turns every mechanism on: yarn RoPE with mscale, q and kv low-rank, a dense first
layer, shared experts, group-limited routing (2 of 4 groups), a non-zero routing bias that changes
the selection, MTP. Everything is built locally with random weights; nothing comes from the hub.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from training.model import ModelConfig, from_pretrained
from training.model.hf import config_from_hf
from training.model.model import Transformer

from tests.model_fixtures import tiny_model_config

transformers = pytest.importorskip("transformers")
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**kw) -> ModelConfig:
    kw = {"vocab_size": 97, "max_position_embeddings": 128, "num_nextn_predict_layers": 1, **kw}
    return tiny_model_config(original_max_position_embeddings=32, **kw)


@pytest.fixture(scope="module")
def ours() -> Transformer:
    torch.manual_seed(0)
    model = Transformer(tiny_config()).eval()
    for moe in model.moe_layers().values():  # large enough to change which experts are picked
        moe.gate.e_score_correction_bias.normal_(0, 0.2)
    return model


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 97, (3, 24), generator=torch.Generator().manual_seed(1))


def _bias_changes_routing(model: Transformer, ids: torch.Tensor) -> bool:
    moe = model.layers[1].mlp
    x = model.embed_tokens(ids).flatten(0, 1)
    _, with_bias, _ = moe.gate(x)
    saved = moe.gate.e_score_correction_bias.clone()
    moe.gate.e_score_correction_bias.zero_()
    _, without, _ = moe.gate(x)
    moe.gate.e_score_correction_bias.copy_(saved)
    return not torch.equal(with_bias.sort(-1).values, without.sort(-1).values)


def test_theirs_loads_ours(ours, ids, tmp_path):
    assert _bias_changes_routing(ours, ids)  # the test would not see a bias bug otherwise
    ours.save_pretrained(tmp_path)
    theirs = transformers.DeepseekV3ForCausalLM.from_pretrained(tmp_path).eval()
    assert not hasattr(theirs.model.layers[0].mlp, "experts") and hasattr(theirs.model.layers[1].mlp, "experts")
    with torch.no_grad():
        want, got = theirs(ids).logits, ours(ids)
    assert got.shape == (3, 24, 97)
    assert (want - got).abs().max().item() <= TOL
    assert want.abs().max() > 0.5  # logits are not trivially small


def test_ours_loads_theirs(ids, tmp_path):
    torch.manual_seed(2)
    hf_cfg = transformers.DeepseekV3Config(
        vocab_size=97, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, n_shared_experts=2, n_routed_experts=8,
        kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, v_head_dim=12, qk_nope_head_dim=8,
        n_group=4, topk_group=2, num_experts_per_tok=3, first_k_dense_replace=1, max_position_embeddings=128,
        initializer_range=0.1, routed_scaling_factor=1.5,
        rope_parameters={"rope_type": "yarn", "rope_theta": 500.0, "factor": 2.0,
                         "original_max_position_embeddings": 64, "beta_fast": 32, "beta_slow": 1},
    )
    theirs = transformers.DeepseekV3ForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for layer in theirs.model.layers[1:]:
            layer.mlp.gate.e_score_correction_bias.normal_(0, 0.2)
    theirs.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:  # what transformers 5 writes
        assert "model.layers.1.mlp.experts.0.gate_proj.weight" in f.keys()
    ours = from_pretrained(tmp_path)
    assert ours.config.q_lora_rank is None and ours.config.n_shared_experts == 2
    assert len(ours.mtp) == 0  # transformers stores no MTP weights
    with torch.no_grad():
        assert (theirs(ids).logits - ours(ids)).abs().max().item() <= TOL


def test_mtp_and_router_bias_survive_a_round_trip(ours, tmp_path):
    ours.save_pretrained(tmp_path, eos_token_id=1)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["DeepseekV3ForCausalLM"] and cfg["eos_token_id"] == 1
    with safe_open(tmp_path / "model.safetensors", "pt") as f:  # DeepSeek's layout for MTP
        assert "model.layers.3.eh_proj.weight" in f.keys()
        assert "model.layers.3.shared_head.norm.weight" in f.keys()
    assert len(from_pretrained(tmp_path, mtp=False).mtp) == 0  # inference can drop them
    back = from_pretrained(tmp_path)
    assert len(back.mtp) == 1
    for (name, a), b in zip(ours.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name


def test_sharded_save_loads(ours, ids, tmp_path):
    ours.save_pretrained(tmp_path, max_shard_bytes=20_000)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 2
    with torch.no_grad():
        assert torch.equal(from_pretrained(tmp_path)(ids), ours(ids))


def test_fp8_block_checkpoint_is_dequantized(ours, tmp_path):
    """DeepSeek's release stores float8 weights with one fp32 scale_inv per 128 x 128 block."""
    ours.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    with safe_open(path, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    key = "model.layers.0.mlp.gate_proj.weight"  # (48, 32): one partial block
    w = tensors[key]
    scale = w.abs().max() / 448.0
    tensors[key] = (w / scale).to(torch.float8_e4m3fn)
    tensors[key + "_scale_inv"] = scale.reshape(1, 1).float()
    save_file(tensors, path, metadata={"format": "pt"})
    back = from_pretrained(tmp_path)
    got = back.layers[0].mlp.gate_proj.weight
    assert (got - w).abs().max() <= 0.07 * w.abs().max()  # e4m3 keeps 3 mantissa bits
    assert not torch.equal(got, w)


def test_deepseek_release_config_is_read():
    """DeepSeek-V3's own config.json keeps RoPE under rope_scaling + rope_theta."""
    release = {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": 129280,
        "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
        "num_hidden_layers": 61, "num_nextn_predict_layers": 1, "num_attention_heads": 128,
        "num_key_value_heads": 128, "n_shared_experts": 1, "n_routed_experts": 256,
        "routed_scaling_factor": 2.5, "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64,
        "v_head_dim": 128, "qk_nope_head_dim": 128, "topk_method": "noaux_tc", "n_group": 8,
        "topk_group": 4, "num_experts_per_tok": 8, "first_k_dense_replace": 3, "norm_topk_prob": True,
        "scoring_func": "sigmoid", "hidden_act": "silu", "max_position_embeddings": 163840,
        "rms_norm_eps": 1e-06, "rope_theta": 10000, "attention_bias": False,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"},
    }
    cfg = config_from_hf(release)
    assert cfg.rope_parameters.rope_type == "yarn" and cfg.rope_parameters.factor == 40
    assert cfg.num_nextn_predict_layers == 1 and cfg.n_group == 8
    # yarn's mscale: softmax scale = 1/sqrt(192) * (0.1 ln 40 + 1)^2
    assert cfg.softmax_scale == pytest.approx(192**-0.5 * (0.1 * torch.tensor(40.0).log().item() + 1) ** 2)
    with pytest.raises(ValueError, match="hidden_act"):
        config_from_hf({**release, "hidden_act": "gelu"})


def test_transformers_models_import_beside_our_kernels_package():
    """Our top-level `kernels` package shares its name with Hugging Face's `kernels` distribution, which
    transformers imports when it is installed (a hard dependency from transformers 5.25 on): the
    DeepSeek-V3 model class must still import in a process that runs from the repository root."""
    root = Path(__file__).resolve().parents[1]
    code = "import kernels.fp8_gemm\nfrom transformers import DeepseekV3ForCausalLM\nprint(DeepseekV3ForCausalLM.__name__)"
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "DeepseekV3ForCausalLM" in res.stdout, res.stderr[-2000:]
