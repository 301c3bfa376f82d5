import pytest

from training.settings import ProfileError, load_profile


@pytest.mark.parametrize("name", ["tiny", "small", "v3-671b"])
def test_every_profile_loads(name):
    assert load_profile(name).name == name


def test_environment_picks_the_profile(monkeypatch):
    monkeypatch.setenv("SEEKFLOW_PROFILE", "small")
    assert load_profile().name == "small"


def test_override_by_dotted_name():
    p = load_profile("tiny", {"web_filters.gopher_quality.min_doc_words": 7, "shards.sequence_length": 64})
    assert p.web_filters.gopher_quality.min_doc_words == 7 and p.shards.sequence_length == 64


def test_unknown_field_names_file_field_and_accepted():
    with pytest.raises(ProfileError, match=r"tiny.yaml.*'min_doc_wordz'.*gopher_quality.*accepted.*min_doc_words"):
        load_profile("tiny", {"web_filters.gopher_quality.min_doc_wordz": 3})


def test_wrong_type_names_field_and_value():
    with pytest.raises(ProfileError, match=r"executor.tasks: expected int, got 'many'"):
        load_profile("tiny", {"executor.tasks": "many"})


def test_invalid_choice_names_accepted_values():
    with pytest.raises(ProfileError, match=r"executor.kind.*'local', 'slurm', 'ray'"):
        load_profile("tiny", {"executor.kind": "spark"})


def test_unknown_profile_lists_profiles():
    with pytest.raises(ProfileError, match=r"'huge' not found.*'small', 'tiny', 'v3-671b'"):
        load_profile("huge")


@pytest.mark.parametrize("override", [{"pretrain.zero_stage": 3}, {"pretrain.ep_size": 2}])
def test_cuda_graphs_refuse_what_a_capture_cannot_replay(override):
    graphed = {"pretrain.cuda_graphs": True}
    with pytest.raises(ProfileError, match=r"pretrain\.cuda_graphs needs " + list(override)[0].replace(".", r"\.")):
        load_profile("small", {**graphed, **override})
    assert load_profile("small", graphed).pretrain.cuda_graphs
    both = load_profile("small", {**graphed, "pretrain.compile": True}).pretrain  # compiled blocks are captured
    assert both.cuda_graphs and both.compile


def test_cuda_graphs_on_a_cpu_say_so():
    import torch

    from tests.model_fixtures import tiny_model_config
    from training.graphs import capture_blocks
    from training.model import Transformer

    ids = torch.randint(0, 61, (2, 9))
    with pytest.raises(ValueError, match=r"pretrain\.cuda_graphs needs a CUDA device; this run is on cpu"):
        capture_blocks(Transformer(tiny_model_config()).train(), ids[:, :-1], ids[:, 1:])


def test_a_negative_checkpoint_cadence_names_what_is_accepted():
    # 0 is a cadence (no weights written: a sweep); below it is a typo, refused before any run
    assert load_profile("tiny", {"pretrain.checkpoint_every": 0}).pretrain.checkpoint_every == 0
    with pytest.raises(ProfileError, match=r"pretrain\.checkpoint_every is -5; must be >= 0 \(0: no checkpoint"):
        load_profile("tiny", {"pretrain.checkpoint_every": -5})
