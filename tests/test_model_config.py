"""Config validation, profiles, and accounting (the v3-671b figures, computed without allocating)."""

from __future__ import annotations

import pytest
import torch

from training.model import ModelConfig, ModelConfigError
from training.model.accounting import (
    count_parameters, flops_per_token, latent_cache_bytes_per_token, mha_cache_bytes_per_token,
)
from training.settings import ProfileError, load_profile


@pytest.mark.parametrize("fields, named", [
    (dict(num_experts_per_tok=20, n_routed_experts=16), ["num_experts_per_tok", "n_routed_experts"]),
    (dict(topk_group=5, n_group=4), ["topk_group", "n_group"]),
    (dict(n_routed_experts=18, n_group=4), ["n_routed_experts", "n_group"]),
    (dict(num_experts_per_tok=5, n_group=4, topk_group=1), ["num_experts_per_tok", "topk_group"]),
    (dict(qk_rope_head_dim=7), ["qk_rope_head_dim"]),
    (dict(scoring_func="relu"), ["scoring_func"]),
    (dict(rope_parameters={"rope_type": "ntk"}), ["rope_type"]),
])
def test_invalid_combinations_name_their_fields(fields, named):
    with pytest.raises(ModelConfigError) as e:
        ModelConfig(**fields)
    for name in named:
        assert name in str(e.value)


def test_dense_model_skips_moe_checks():
    cfg = ModelConfig(n_routed_experts=0, num_experts_per_tok=99)
    assert not any(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))


@pytest.mark.parametrize("name", ["tiny", "small", "v3-671b"])
def test_profiles_carry_a_model(name):
    p = load_profile(name)
    assert isinstance(p.model, ModelConfig)
    assert p.model.vocab_size >= p.tokenizer.vocab_size


def test_profile_errors_name_the_file_and_field():
    with pytest.raises(ProfileError, match=r"(?s)tiny\.yaml.*topk_group"):
        load_profile("tiny", {"model.topk_group": 9})
    with pytest.raises(ProfileError, match="model.vocab_size"):
        load_profile("tiny", {"model.vocab_size": 100})


def test_v3_671b_counts():
    """The paper: 671B total, 37B activated (DeepSeek's README_WEIGHTS.md: 36.7B, with embedding
    and head); MTP 11.5B unique parameters, 685B on disk with its embedding and head copies."""
    cfg = load_profile("v3-671b").model
    p = count_parameters(cfg)
    assert p.total == pytest.approx(671e9, rel=0.01)
    assert p.activated == pytest.approx(36.7e9, rel=0.01)
    assert p.mtp == pytest.approx(11.5e9, rel=0.01)
    assert p.total_with_mtp + 2 * p.embedding == pytest.approx(685e9, rel=0.01)
    assert p.mtp_with_shared == pytest.approx(14e9, rel=0.05)
    # MLA's cache per token vs a multi-head cache of the same heads: 576 vs 40960 numbers per layer
    assert latent_cache_bytes_per_token(cfg, 2) == (512 + 64) * 61 * 2
    assert mha_cache_bytes_per_token(cfg) / latent_cache_bytes_per_token(cfg) >= 50
    # 6 x activated non-embedding + attention: about 2.9e11 FLOPs per token at 4K context
    f = flops_per_token(cfg, 4096, include_mtp=False)
    assert f == 6 * (p.activated - cfg.hidden_size) + 6 * 61 * 128 * (192 + 128) * 4096


@pytest.mark.parametrize("name", ["tiny", "v3-671b"])
def test_closed_forms_match_a_meta_device_model(name):
    from training.model import Transformer

    cfg = load_profile(name).model
    with torch.device("meta"):
        model = Transformer(cfg)
    p = count_parameters(cfg)
    main = sum(t.numel() for n, t in model.named_parameters() if not n.startswith("mtp."))
    mtp = sum(t.numel() for n, t in model.named_parameters() if n.startswith("mtp."))
    assert (main, mtp) == (p.total, p.mtp)
