"""A tiny DeepSeek-V3 config with every mechanism on, shared by the model tests."""

from training.model import ModelConfig, RopeParameters


def tiny_model_config(original_max_position_embeddings: int = 16, **kw) -> ModelConfig:
    base = dict(
        vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12,
        rope_parameters=RopeParameters(rope_type="yarn", factor=4.0,
                                       original_max_position_embeddings=original_max_position_embeddings),
        max_position_embeddings=96, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
        n_group=4, topk_group=2, moe_intermediate_size=16, first_k_dense_replace=1,
        num_nextn_predict_layers=2, initializer_range=0.1,
    )
    base.update(kw)
    return ModelConfig(**base)


def fp8_tiny_model_config() -> ModelConfig:
    """The tiny config at widths the FP8 kernels take (multiples of 128 where they tile), for GPU tests."""
    return tiny_model_config(original_max_position_embeddings=64, vocab_size=512, hidden_size=256,
                             intermediate_size=512, num_attention_heads=4, q_lora_rank=128, kv_lora_rank=128,
                             qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=32, max_position_embeddings=256,
                             moe_intermediate_size=128, initializer_range=0.02)
