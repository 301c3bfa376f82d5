"""Distillation students: dense, smaller than the teacher's activated size, and runnable."""

from __future__ import annotations

import pytest

from training.model import count_parameters
from training.settings import load_profile
from training.students import StudentConfigError, student_config, student_configs, suggested_sizes


@pytest.mark.parametrize("profile", ["tiny", "small", "v3-671b"])
def test_suggested_students_are_dense_and_shrink_in_order(profile):
    teacher = load_profile(profile).model
    students = student_configs(teacher, suggested_sizes(profile))
    assert len(students) >= 2  # the issue asks for at least two sizes
    sizes = [count_parameters(teacher).activated] + [count_parameters(c).activated for c in students.values()]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    for c in students.values():
        assert c.n_routed_experts == 0 and c.n_shared_experts == 0 and c.num_nextn_predict_layers == 0
        assert not any(c.is_moe_layer(i) for i in range(c.num_hidden_layers))
        assert (c.vocab_size, c.max_position_embeddings, c.rope_parameters) == (
            teacher.vocab_size, teacher.max_position_embeddings, teacher.rope_parameters)


def test_tiny_students_are_about_a_half_and_a_quarter_of_the_teacher():
    teacher = load_profile("tiny").model
    limit = count_parameters(teacher).activated
    half, quarter = (count_parameters(c).activated / limit
                     for c in student_configs(teacher, suggested_sizes("tiny")).values())
    assert half == pytest.approx(0.5, abs=0.05) and quarter == pytest.approx(0.25, abs=0.05)


def test_a_student_as_large_as_the_teacher_is_refused_with_both_sizes():
    teacher = load_profile("tiny").model
    wide = {"hidden_size": 256, "intermediate_size": 1024}
    with pytest.raises(StudentConfigError) as err:
        student_configs(teacher, {"dense-half": suggested_sizes("tiny")["dense-half"], "too-wide": wide})
    own = count_parameters(student_config(teacher, "too-wide", wide)).activated
    msg = str(err.value)
    assert "'too-wide'" in msg and f"{own:,}" in msg and f"{count_parameters(teacher).activated:,}" in msg


def test_fields_shared_with_the_teacher_or_invalid_ones_are_refused_by_name():
    teacher = load_profile("tiny").model
    with pytest.raises(StudentConfigError, match="'s'.*vocab_size.*must match the teacher"):
        student_configs(teacher, {"s": {"hidden_size": 32, "vocab_size": 1000}})
    with pytest.raises(StudentConfigError, match="'s'.*n_routed_experts"):
        student_configs(teacher, {"s": {"hidden_size": 32, "n_routed_experts": 4}})
    with pytest.raises(StudentConfigError, match="(?s)'odd'.*qk_rope_head_dim is 7"):
        student_configs(teacher, {"odd": {"hidden_size": 32, "qk_rope_head_dim": 7}})
    with pytest.raises(StudentConfigError, match="no student sizes"):
        student_configs(teacher, {})


def test_a_student_builds_and_runs_forward_and_backward_on_cpu(one_torch_thread):
    import torch

    from tests.model_fixtures import tiny_model_config
    from training.model import Transformer

    teacher = tiny_model_config()
    (cfg,) = student_configs(teacher, {"s": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                                             "q_lora_rank": None}}).values()
    torch.manual_seed(0)
    model = Transformer(cfg)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(cfg).total  # no MoE, no MTP modules
    ids = torch.randint(0, cfg.vocab_size, (2, 12))
    logits = model(ids)
    assert logits.shape == (2, 12, teacher.vocab_size) and torch.isfinite(logits).all()
    out = model(ids[:, :-1], labels=ids[:, 1:])
    out.loss.backward()
    assert out.mtp_losses == [] and float(out.balance_loss) == 0.0
    assert all(p.grad is not None for p in model.parameters())
