"""SFT data (training/sft_data.py, training/general_prompts.py) and the general reward: only samples
whose rewards pass are kept, each source comes in at its configured size, held-out tasks never
train, every dropped candidate keeps its reason, general examples answer from their document."""

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from tests.pretrain_fixtures import tokenizer_and_corpus, untrained_export
from training import sft_data
from training.general_prompts import general_examples, python_functions
from training.rewards import format_reward, score
from training.rewards.general import general_f1, token_f1
from training.settings import SFTDataConfig, TasksConfig, load_profile
from training.tasks.build import make_tasks

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def tasks_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks")
    make_tasks(TasksConfig(counts={"arithmetic": 12, "linear": 12, "countdown": 12, "word": 12, "code": 4},
                           difficulties=[1, 2], heldout_share=0.2, max_prompt_chars=160, max_solution_chars=260), out)
    return out / "tasks.parquet"


@pytest.fixture(scope="module")
def tasks(tasks_path):
    return pq.read_table(tasks_path).to_pylist()


def _read(out, name="sft.parquet"):
    return pq.read_table(out / name).to_pylist()


# ---------------------------------------------------------------------------------------------
# the general reward


def test_general_reward_is_squad_token_f1_of_the_answer():
    assert token_f1("The cat sat.", "a cat sat down") == pytest.approx(0.8)  # P = 2/2, R = 2/3
    assert token_f1("cat cat", "cat") == pytest.approx(2 / 3)  # repeats count once per match
    assert token_f1("dog", "cat") == 0.0
    ok = "<think>It is in the docstring.</think> <answer>Return the sum of a and b.</answer>"
    assert general_f1(ok, "Return the sum of a and b.") == 1.0
    assert general_f1("Return the sum of a and b.", "Return the sum of a and b.") == 0.0  # no format, no reward
    task = {"kind": "general", "reference": "Return the sum of a and b."}
    assert score(task, ok, ("accuracy", "format")) == {"accuracy": 1.0, "format": 1.0}
    with pytest.raises(ValueError, match="reference"):
        score({"kind": "general"}, ok)


# ---------------------------------------------------------------------------------------------
# judging samples


def _candidate(task_id, sample, accuracy=1.0, fmt=1.0, language=1.0, stopped=True,
               response="<think>Add the two numbers, then check.</think> <answer>5</answer>"):
    return {"task_id": task_id, "sample": sample, "response": response, "accuracy": accuracy, "format": fmt,
            "language": language, "stopped": stopped}


def test_filter_keeps_only_candidates_whose_rewards_pass():
    cfg = SFTDataConfig(max_per_task=1, min_response_chars=10, max_response_chars=200)
    candidates = [
        _candidate("a", 0),  # kept
        _candidate("a", 1, response="<think>Add them, then check again.</think> <answer>5</answer>"),  # cap
        _candidate("b", 0, accuracy=0.0),
        _candidate("c", 0, fmt=0.0, accuracy=0.0, response="5"),
        _candidate("d", 0, language=0.5, response="<think>Add 加 them.</think> <answer>5</answer>"),
        _candidate("e", 0, language=0.0, response="<think>2 + 3 = 5.</think> <answer>5</answer>"),  # kept: no letters
        _candidate("f", 0, stopped=False),
        _candidate("g", 0, response="<think>x</think> <answer>5</answer>"),  # 33 chars: kept
        _candidate("h", 0, response="5"),  # too short (the rewards are given, not computed)
        _candidate("i", 0, response="<think>Add.<|user|>hi</think> <answer>5</answer>"),
        _candidate("j", 0, response=f"<think>{'Add them. ' * 30}</think> <answer>5</answer>"),
    ]
    kept, rejected = sft_data.filter_candidates(candidates, cfg)
    assert [(c["task_id"], c["sample"]) for c in kept] == [("a", 0), ("e", 0), ("g", 0)]
    reasons = {c["task_id"]: c["reason"].split(":")[0] for c in rejected}
    assert reasons == {"a": "per_task_cap", "b": "incorrect", "c": "format", "d": "language", "f": "truncated",
                       "h": "too_short", "i": "special_token", "j": "too_long"}


def test_rule_rewards_decide_which_real_samples_are_kept(tasks):
    task = next(t for t in tasks if t["split"] == "train" and t["family"] == "arithmetic")
    gold = task["answer"]
    responses = {
        "right": f"<think>I work it out step by step.</think> <answer>{gold}</answer>",
        "wrong": f"<think>I work it out step by step.</think> <answer>{int(gold) + 1}</answer>",
        "mixed": f"<think>I work it out 一步一步.</think> <answer>{gold}</answer>",
        "malformed": f"The answer is {gold}.",
        "again": f"<think>I work it out step by step.</think>  <answer>{gold}</answer>",  # the same, spaced
    }
    candidates = [{"task_id": task["id"], "sample": i, "response": r, "name": name}
                  for i, (name, r) in enumerate(responses.items())]
    scored = sft_data.score_candidates(candidates, {task["id"]: task}, SFTDataConfig())
    kept, rejected = sft_data.filter_candidates(scored, SFTDataConfig(max_per_task=4))
    assert [c["name"] for c in kept] == ["right"]
    assert {c["name"]: c["reason"].split(":")[0] for c in rejected} == {
        "wrong": "incorrect", "mixed": "language", "malformed": "format", "again": "duplicate"}


# ---------------------------------------------------------------------------------------------
# the two sets


def test_cold_start_mixes_sources_at_configured_sizes(tasks, tasks_path, tmp_path):
    train = [t for t in tasks if t["split"] == "train" and t["kind"] == "math"][:6]
    heldout = next(t for t in tasks if t["split"] == "heldout")
    samples = []
    for t in train:  # per task: a correct sample, a wrong one
        samples.append({"task_id": t["id"], "sample": 0, "response": t["solution"].replace("<think>", "<think>So: ")})
        samples.append({"task_id": t["id"], "sample": 1, "response": "<think>Guess.</think> <answer>-999</answer>"})
    samples.append({"task_id": heldout["id"], "sample": 0, "response": heldout["solution"]})
    samples.append({"task_id": "no-such-task", "sample": 0, "response": "<think>x</think> <answer>1</answer>"})
    cfg = SFTDataConfig(sampled=4, worked=5, min_response_chars=10)
    summary = sft_data.build_cold_start(samples, tasks_path, cfg, tmp_path)
    rows, excluded = _read(tmp_path), _read(tmp_path, "excluded.parquet")
    assert summary["by_source"] == {"r1_zero": 4, "worked": 5} == dict(Counter(r["source"] for r in rows))
    assert summary["available"] == {"r1_zero": 6} and summary["mix"]["reasoning"] == 1.0
    assert Counter(e["reason"] for e in excluded) == {"over_quota": 2, "incorrect": 6, "heldout_task": 1,
                                                      "unknown_task": 1}
    split = {t["id"]: t["split"] for t in tasks}
    assert all(split[r["task_id"]] == "train" and format_reward(r["response"]) == 1.0 for r in rows)
    assert set(summary["acceptance"]["r1_zero"].values()) == {0.5}  # one of two samples right, per family
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert set(rows[0]) == set(sft_data.SFT_SCHEMA.names)
    assert len({r["id"] for r in rows}) == len(rows)


def test_cold_start_with_nothing_to_take_fails_with_the_reasons(tasks_path, tmp_path):
    with pytest.raises(ValueError, match="no example passed"):
        sft_data.build_cold_start([], tasks_path, SFTDataConfig(worked=0), tmp_path)
    with pytest.raises(FileNotFoundError, match="tasks.parquet"):
        sft_data.build_cold_start([], tmp_path / "missing", SFTDataConfig(), tmp_path)


@pytest.fixture(scope="module")
def corpus_and_model(tmp_path_factory):
    home = tmp_path_factory.mktemp("sft_data_home")
    corpus, tok = tokenizer_and_corpus(home)
    return corpus, untrained_export(home / "model", load_profile("tiny").model, tok)


def test_rejection_sampling_keeps_three_reasoning_per_general(corpus_and_model, tasks_path, tmp_path):
    corpus, model = corpus_and_model
    cfg = SFTDataConfig(samples_per_prompt=2, prompts=6, max_new_tokens=8, worked=9, reasoning_to_general=3.0,
                        temperature=1.0, min_response_chars=10)
    summary = sft_data.build_rejection_sampled(model, tasks_path, corpus, cfg, tmp_path)
    rows = _read(tmp_path)
    samples = _read(tmp_path, "samples.parquet")
    assert len(samples) == 12 and summary["prompts"] == 6
    kept = [s for s in samples if not s["reason"]]
    assert all(s["accuracy"] == s["format"] == 1.0 for s in kept)  # an untrained model: usually none
    reasoning = [r for r in rows if r["kind"] == "reasoning"]
    general = [r for r in rows if r["kind"] == "general"]
    assert len(reasoning) == 9 + len(kept) and len(general) == round(len(reasoning) / 3)
    assert summary["mix"]["reasoning_per_general"] == pytest.approx(len(reasoning) / len(general))
    for r in general:  # a general response earns the full proxy reward against its own reference
        assert score({"kind": "general", "reference": r["reference"]}, r["response"]) == {"accuracy": 1.0, "format": 1.0}
    excluded = _read(tmp_path, "excluded.parquet")
    assert sum(e["source"] == "rejection" for e in excluded) == 12 - len(kept)
    assert set(summary["acceptance"]["rejection"]) <= {"arithmetic", "linear", "countdown", "word", "code"}


def test_general_examples_take_their_answers_from_the_documents(corpus_and_model):
    corpus, _ = corpus_and_model
    rows, excluded, stats = general_examples(corpus, 9, SFTDataConfig(seed=1))
    assert Counter(r["family"] for r in rows) == {"docstring": 3, "function_name": 3, "continuation": 3}
    texts = {r["id"]: r["text"] for r in pq.read_table(corpus / "documents").to_pylist()}
    for r in rows:
        source = texts[r["task_id"]]
        assert format_reward(r["response"]) == 1.0 and len(r["prompt"]) <= 600
        if r["family"] == "docstring":  # the docstring's first sentence, absent from the prompt
            assert r["reference"] in {f["summary"] for f in python_functions(source)}
            assert r["reference"] not in r["prompt"]
        elif r["family"] == "function_name":  # one of the functions shown
            assert f"def {r['reference']}(" in r["prompt"]
        else:  # the rest of a sentence of the document
            head = r["prompt"].removeprefix('Complete the sentence: "').removesuffix(' ..."')
            assert f"{head} {r['reference']}" in " ".join(source.split())
    assert all(e["reason"] for e in excluded) and stats["available.docstring"] >= 3


def test_cold_start_samples_the_r1_zero_export_when_given_one(corpus_and_model, tasks_path, tmp_path):
    _, model = corpus_and_model
    cfg = SFTDataConfig(samples_per_prompt=2, prompts=3, max_new_tokens=6, worked=4, min_response_chars=10)
    summary = sft_data.build_cold_start(model, tasks_path, cfg, tmp_path)
    samples = _read(tmp_path, "samples.parquet")
    assert len(samples) == 6 and {s["sample"] for s in samples} == {0, 1}
    assert summary["by_source"]["worked"] == 4
    assert summary["examples"] == 4 + sum(not s["reason"] for s in samples)
