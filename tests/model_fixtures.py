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
