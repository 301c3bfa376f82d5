"""Reasoning tasks: generators, split, user sets, decontamination and the worked examples."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.settings import ProfileError, TasksConfig, UserTaskSet, WorkedExamplesConfig, load_profile
from training.tasks import TASK_SCHEMA, SplitLeakError, check_split_disjoint, make_tasks, split_of
from training.tasks.decontaminate import contamination, words
from training.tasks.families import word
from training.tasks.loaders import TaskFileError, math_gold
from training.tasks.worked import worked_example_documents

RESPONSE = re.compile(r"^<think>(.*)</think> <answer>(.*)</answer>$", re.DOTALL)
SMALL = TasksConfig(counts={"arithmetic": 30, "linear": 30, "countdown": 30, "word": 30, "code": 20},
                    difficulties=[1, 2, 3], heldout_share=0.2)


@pytest.fixture(scope="module")
def parquet(tmp_path_factory) -> pa.Table:
    out = tmp_path_factory.mktemp("tasks")
    make_tasks(SMALL, out)
    return pq.read_table(out / "tasks.parquet")


@pytest.fixture(scope="module")
def table(parquet) -> list[dict]:
    return parquet.to_pylist()


def test_same_seed_same_table_other_seed_other_tasks(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_tasks(SMALL, a)
    make_tasks(SMALL, b)
    make_tasks(TasksConfig(**{**vars(SMALL), "seed": 1}), c)
    ta, tb, tc = (pq.read_table(d / "tasks.parquet") for d in (a, b, c))
    assert ta.equals(tb)
    assert set(ta.column("template").to_pylist()) != set(tc.column("template").to_pylist())


def test_table_schema_and_per_kind_columns(parquet, table):
    assert parquet.schema.equals(TASK_SCHEMA)
    assert parquet.schema.names[:13] == ["id", "family", "kind", "difficulty", "split", "template", "prompt",
                                                   "answer", "numbers", "tests", "entry_point", "solution", "source"]
    assert len({r["id"] for r in table}) == len(table)
    for r in table:
        assert bool(r["numbers"]) == (r["kind"] == "countdown")
        assert bool(r["tests"]) == bool(r["entry_point"]) == (r["kind"] == "code")
        assert r["source"] == "generated" and r["split"] == split_of(r["template"], SMALL.heldout_share)


def test_counts_per_family_and_difficulty(table):
    cells = {}
    for r in table:
        cells.setdefault((r["family"], r["difficulty"]), []).append(r["split"])
    for (family, _), splits in cells.items():
        assert len(splits) == SMALL.counts[family]
        assert splits.count("heldout") == round(SMALL.counts[family] * SMALL.heldout_share)


def test_every_solution_is_in_the_format_and_correct(table):
    for r in table:
        think, final = RESPONSE.match(r["solution"]).groups()
        assert think.strip(), r
        if r["family"] == "arithmetic":
            assert final == r["answer"] == str(eval(r["template"].split(":", 1)[1]))
        elif r["family"] == "linear":
            a, b, c = map(int, r["template"].split(":")[1].split(","))
            assert a * int(final) + b == c and final == r["answer"]
        elif r["family"] == "countdown":
            assert eval(final) == int(r["answer"])
            assert sorted(map(int, re.findall(r"\d+", final))) == sorted(r["numbers"])
            assert all(str(n) in r["prompt"] for n in r["numbers"]) and r["answer"] in r["prompt"]
        elif r["family"] == "code":
            assert final == r["answer"] and f"{r['entry_point']}(" in r["prompt"]
            exec(final + "\n" + r["tests"], {})  # the reference passes its hidden tests
        else:
            assert final == r["answer"] and re.search(r"\d", r["prompt"])


def test_difficulty_one_is_single_digit_and_prompts_are_short(table):
    d1 = [r for r in table if r["family"] == "arithmetic" and r["difficulty"] == 1]
    assert d1 and all(re.fullmatch(r"arithmetic:\d \+ \d", r["template"]) for r in d1)
    assert max(len(r["prompt"]) for r in table) <= SMALL.max_prompt_chars
    assert max(len(r["solution"]) for r in table) <= SMALL.max_solution_chars
    # short enough to be checked whole for contamination (decontaminate.py says why)
    assert max(len(words(r["prompt"])) for r in table) <= SMALL.decontamination_whole_prompt_tokens


def test_generated_tasks_score_full_marks():
    rewards = pytest.importorskip("training.rewards")
    from training.tasks.build import FAMILIES

    import random

    rng = random.Random(0)
    insts = [FAMILIES[f](rng, d) for f in FAMILIES for d in (1, 2, 3, 5) for _ in range(5)]
    tasks = [{"kind": i.kind, "answer": i.answer, "numbers": list(i.numbers), "tests": i.tests,
              "entry_point": i.entry_point} for i in insts]
    from training.sandbox import SandboxPool

    with SandboxPool(2) as pool:
        scores = rewards.score_batch(tasks, [i.solution for i in insts], components=("accuracy", "format"), sandbox=pool)
    bad = [(i.key, s) for i, s in zip(insts, scores) if s["accuracy"] != 1.0 or s["format"] != 1.0]
    assert not bad


# ---------------------------------------------------------------------------------------------
# the split


def test_template_instance_is_the_problem_without_its_wording():
    import random

    from training.tasks.families import NAMES

    rng = random.Random(3)
    prompts: dict[str, set[str]] = {}
    for _ in range(3000):
        inst = word(rng, 1)
        prompts.setdefault(inst.key, set()).add(inst.prompt)
    rephrased = {k: p for k, p in prompts.items() if len(p) > 1}
    # the same problem comes in other names, objects and phrasings under one key (so one split) ...
    assert len(rephrased) > 50 and not any(name in k for k in prompts for name in NAMES)
    # ... and a key never covers two problems: its prompts all carry the same numbers
    assert all(len({tuple(sorted(re.findall(r"\d+", x))) for x in p}) == 1 for p in prompts.values())


def test_check_split_disjoint_catches_a_leak(table):
    t = pa.Table.from_pylist(table, schema=TASK_SCHEMA)
    assert sum(check_split_disjoint(t).values()) == len(table)
    held = next(r for r in table if r["split"] == "heldout")
    leaked = pa.Table.from_pylist(table + [{**held, "split": "train", "id": "leak", "prompt": held["prompt"] + " "}],
                                  schema=TASK_SCHEMA)
    with pytest.raises(SplitLeakError, match="template"):
        check_split_disjoint(leaked)
    reworded = pa.Table.from_pylist(table + [{**held, "split": "train", "id": "leak", "template": "other"}],
                                    schema=TASK_SCHEMA)
    with pytest.raises(SplitLeakError, match="prompt"):
        check_split_disjoint(reworded)


def test_profile_rejects_unknown_family_and_a_second_split():
    with pytest.raises(ProfileError, match=r"tasks.counts.*\['algebra'\].*accepted.*arithmetic"):
        load_profile("tiny", {"tasks.counts": {"algebra": 3}})
    with pytest.raises(ProfileError, match="worked_examples.heldout_share"):
        load_profile("tiny", {"corpus.worked_examples.heldout_share": 0.5})
    assert load_profile("tiny").corpus.worked_examples.heldout_share == load_profile("tiny").tasks.heldout_share


# ---------------------------------------------------------------------------------------------
# user sets


def _jsonl(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_gsm8k_and_math_gold():
    assert math_gold("Half of 48 is <<48/2=24>>24.\n#### 1,024") == ("1024", "Half of 48 is 24.")
    assert math_gold(r"So $x = \boxed{\frac{1}{2}}$ and not \boxed{3}? No: \boxed{\frac{1}{\sqrt{2}}}.")[0] == r"\frac{1}{\sqrt{2}}"
    assert math_gold(" 42 ") == ("42", "")


def test_user_sets_load_and_bad_lines_are_kept_with_file_line_reason(tmp_path):
    math = _jsonl(tmp_path / "gsm.jsonl", [
        {"question": "Tim has 3 cats and buys 2. How many cats?", "answer": "3 + 2 = 5\n#### 5"},
        "{not json",
        {"question": "Missing the answer"},
        [1, 2],
        {"question": "tim has 3 cats and buys 2.  How many cats?", "answer": "#### 5"},  # same question
        {"problem": "What is $1/2 + 1/2$?", "solution": r"It is $\boxed{1}$.", "level": "Level 2"},
    ])
    code = _jsonl(tmp_path / "mbpp.jsonl", [
        {"prompt": "Write inc(n).", "tests": ["assert inc(1) == 2"], "entry_point": "inc", "solution": "def inc(n):\n    return n + 1"},
        {"prompt": "Write dec(n).", "tests": "assert dec(1) == 0"},
    ])
    cfg = TasksConfig(counts={}, user_sets=[UserTaskSet(str(math), "heldout"), UserTaskSet(str(code), "train", "mycode")])
    summary = make_tasks(cfg, tmp_path / "out")
    rows = pq.read_table(tmp_path / "out" / "tasks.parquet").to_pylist()
    excluded = pq.read_table(tmp_path / "out" / "excluded.parquet").to_pylist()
    assert [(r["family"], r["kind"], r["split"], r["answer"], r["difficulty"]) for r in rows] == [
        ("gsm", "math", "heldout", "5", 0), ("gsm", "math", "heldout", "1", 2),
        ("mycode", "code", "train", "def inc(n):\n    return n + 1", 0)]
    assert rows[2]["tests"] == "assert inc(1) == 2" and rows[0]["source"] == str(math)
    reasons = {(Path(e["source"]).name, e["line"]): e["reason"] for e in excluded}
    assert reasons[("gsm.jsonl", 2)].startswith("invalid_json")
    assert reasons[("gsm.jsonl", 3)] == "missing_field:answer"
    assert reasons[("gsm.jsonl", 4)] == "not_an_object"
    assert reasons[("gsm.jsonl", 5)] == "duplicate_question"
    assert reasons[("mbpp.jsonl", 2)] == "missing_field:entry_point"
    assert summary["excluded"] == 5 and summary["tasks"] == 3


def test_missing_user_file_names_it(tmp_path):
    cfg = TasksConfig(counts={}, user_sets=[UserTaskSet(str(tmp_path / "nope.jsonl"))])
    with pytest.raises(TaskFileError, match=r"nope.jsonl is not a file; accepted: a JSONL file"):
        make_tasks(cfg, tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# decontamination and the worked examples


def _corpus(path: Path, texts: list[str], source: str = "web") -> Path:
    (path / "documents").mkdir(parents=True)
    rows = [{"id": f"d{i}", "text": t, "source": source, "uri": f"u{i}", "meta": "{}"} for i, t in enumerate(texts)]
    pq.write_table(pa.Table.from_pylist(rows), path / "documents" / "0.parquet")
    return path


def test_contamination_whole_short_prompts_and_13_grams_of_long_ones(tmp_path):
    long = "A farmer sells " + " ".join(f"w{i}" for i in range(30)) + " at the market. How much?"
    corpus = _corpus(tmp_path / "c", [
        "<|user|>Tom has 3 apples and gets 5 more. How many apples does Tom have now?<|assistant|>",
        "Anna has 4 apples and gets 5 more. How many apples does Anna have now?",  # same template, not the task
        "copied: " + " ".join(long.split()[5:20]),  # 15 words of the long prompt
        "What is 3 * 5?",
    ])
    result = contamination({"a": "Tom has 3 apples and gets 5 more. How many apples does Tom have now?",
                            "b": "Anna has 7 apples and gets 5 more. How many apples does Anna have now?",
                            "c": long, "d": "What is 3 + 5?"}, corpus, n=13, whole_prompt_tokens=32)
    assert result["contaminated_ids"] == ["a", "c"] and result["share"] == 0.5
    assert result["examples"][0]["document"] == "d0" and result["contaminated_by_source"] == {"web": 2}


def test_worked_examples_hold_only_train_instances_and_special_tokens(tmp_path):
    from tokenizers import Tokenizer

    from training.corpus.tokenizer import train_tokenizer
    from training.settings import TokenizerConfig

    cfg = WorkedExamplesConfig(examples=600, examples_per_document=8, heldout_share=0.3)
    docs = worked_example_documents(cfg)
    assert len(docs) == 75 and sum(d["meta"]["examples"] for d in docs) == 600
    keys = [k for d in docs for k in d["meta"]["templates"]]
    assert {split_of(k, 0.3) for k in keys} == {"train"}
    heldout = make_tasks(TasksConfig(**{**vars(SMALL), "heldout_share": 0.3}), tmp_path / "t")
    rows = pq.read_table(tmp_path / "t" / "tasks.parquet").to_pylist()
    assert heldout["by_split"]["heldout"] > 0 and not {r["template"] for r in rows if r["split"] == "heldout"} & set(keys)
    corpus = _corpus(tmp_path / "c", [d["text"] for d in docs], "worked-examples")
    assert contamination([r["prompt"] for r in rows if r["split"] == "heldout"], corpus)["contaminated"] == 0
    assert contamination([r["prompt"] for r in rows if r["split"] == "train"], corpus)["contaminated"] > 0
    # the chat markers come out as the BPE's special ids, one BOS and (with the shard's EOS) one EOS per example
    tok = Tokenizer.from_file(str(train_tokenizer(corpus, tmp_path / "tok", TokenizerConfig(vocab_size=600))))
    ids = tok.encode(docs[0]["text"]).ids + [tok.token_to_id("<|end_of_text|>")]
    for special, per_example in (("<|begin_of_text|>", 1), ("<|user|>", 1), ("<|assistant|>", 1), ("<think>", 1),
                                 ("</answer>", 1), ("<|end_of_text|>", 1)):
        assert ids.count(tok.token_to_id(special)) == 8 * per_example, special
    assert tok.decode(ids[:-1], skip_special_tokens=False) == docs[0]["text"]


def test_untagged_worked_examples_keep_the_working_but_leave_the_answer_format():
    from training.rewards.format import extract_answer, format_reward

    cfg = dict(examples=400, examples_per_document=400, heldout_share=0.3)
    tagged = worked_example_documents(WorkedExamplesConfig(**cfg))[0]
    mixed = worked_example_documents(WorkedExamplesConfig(**cfg, untagged_share=0.5))[0]
    # the same instances in the same order: the style is drawn apart from the instances
    assert tagged["meta"]["templates"] == mixed["meta"]["templates"]
    responses = lambda doc: [c.split("<|assistant|>")[1].removesuffix("<|end_of_text|>")  # noqa: E731
                             for c in doc["text"].split("<|begin_of_text|>")[1:]]
    untagged = 0
    for key, a, b in zip(tagged["meta"]["templates"], responses(tagged), responses(mixed)):
        if a == b:
            continue
        untagged += 1
        reasoning, final = a.removeprefix("<think>").split("</think> <answer>")
        assert b == f"{reasoning}\nAnswer: {final.removesuffix('</answer>')}", key  # same working, same answer
        assert format_reward(b) == 0.0 and extract_answer(b) is None  # and no reward for it
    assert 150 < untagged < 250
    with pytest.raises(ProfileError, match="untagged_share must be in \\[0, 1\\] \\(got 1.5\\)"):
        WorkedExamplesConfig(untagged_share=1.5)


def test_trusted_worked_examples_pass_the_quality_filters_unchanged(tmp_path, serial_executor):
    from training.corpus import stages
    from training.settings import CodeFiltersConfig, WebFiltersConfig

    texts = [d["text"] for d in worked_example_documents(WorkedExamplesConfig(examples=48, examples_per_document=16))]
    rows = [{"id": f"w{i}", "text": t, "source": "worked-examples", "uri": f"u{i}", "meta": "{}"} for i, t in enumerate(texts)]
    (tmp_path / "in" / "documents").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in" / "documents" / "0.parquet")

    def run(name: str, trusted: list[str]) -> tuple[stages.StageResult, dict[str, str]]:
        result = stages.filter_documents("web", tmp_path / "in", tmp_path / name, WebFiltersConfig(trusted_sources=trusted),
                                         CodeFiltersConfig(), serial_executor, tmp_path / f"logs_{name}")
        kept = pq.read_table(tmp_path / name / "documents").to_pylist() if result.kept else []
        return result, {r["id"]: r["text"] for r in kept}

    result, kept = run("trusted", ["worked-examples"])
    assert kept == {r["id"]: r["text"] for r in rows}  # every document, byte for byte
    assert result.stats[stages.GopherQuality.name]["trusted_source"] == 3
    assert result.stats[stages.C4Quality.name]["trusted_source"] == 3
    result, kept = run("untrusted", [])  # without the bypass, Gopher drops them all (too few alphabetic words)
    assert not kept and result.excluded == 3 and result.input == 3
