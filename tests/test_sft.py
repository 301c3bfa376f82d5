"""SFT (training/sft.py): the loss mask is the assistant's tokens, packing keeps examples whole, a
short run lowers the loss of a MoE and of a dense student and exports a loadable model, and an
interrupted run resumes onto the same trajectory."""

import dataclasses
import json
import random
import shutil
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.pretrain_fixtures import tokenizer_and_corpus, untrained_export
from training import settings, sft
from training.corpus.tokenizer import EOS
from training.launch import StageConfig
from training.model import ModelConfig, from_pretrained
from training.settings import SFTConfig, load_profile
from training.tasks.build import FAMILIES
from training.tasks.format import render_prompt

pytestmark = pytest.mark.timeout(600)

STAGE = "sft_test"  # a profile section of this file's own (the R1 stages' sections are the lead's)
FAST = SFTConfig(epochs=1.0, max_length=128, global_batch_size=8, micro_batch_size=4, learning_rate=3e-3,
                 warmup_steps=2, eval_every=5, checkpoint_every=4, validation_fraction=0.1, threads=1)
DENSE = ModelConfig(n_routed_experts=0, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                    num_attention_heads=2, q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8,
                    v_head_dim=16, num_nextn_predict_layers=0, max_position_embeddings=256)


def worked_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    families = ["arithmetic", "linear", "countdown", "word"]
    rows = []
    for i in range(n):
        inst = FAMILIES[families[i % 4]](rng, 1 + i % 3)
        rows.append({"id": f"ex{i}", "prompt": inst.prompt, "response": inst.solution})
    return rows


@pytest.fixture(scope="module")
def sft_home(tmp_path_factory):
    """A tokenizer, an untrained tiny-profile MoE and a dense student exported with it, and an SFT set
    of 240 worked examples plus one response without the R1 format."""
    home = tmp_path_factory.mktemp("sft_home")
    _, tok = tokenizer_and_corpus(home)
    untrained_export(home / "moe", load_profile("tiny").model, tok)
    untrained_export(home / "dense", DENSE, tok)
    rows = worked_rows(240) + [{"id": "malformed", "prompt": "Say hi.", "response": "hi"}]
    (home / "data").mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), home / "data" / "sft.parquet")
    return home


def run_sft(home: Path, name: str, model: str, cfg: SFTConfig, mlflow_cfg: dict | None = None) -> dict:
    profile = load_profile("tiny").to_dict()
    profile[STAGE] = dataclasses.asdict(cfg)
    stage = StageConfig(stage=STAGE, profile=profile, output_dir=str(home / name), mlflow=mlflow_cfg or {},
                        inputs={"model": str(home / model), "data": str(home / "data")})
    with_section = dataclasses.make_dataclass(
        "ProfileWithSFT", [(STAGE, SFTConfig, dataclasses.field(default_factory=SFTConfig))], bases=(settings.Profile,))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(settings, "Profile", with_section)
        return sft.train(stage)


def _tokenizer(home):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(home / "moe" / "tokenizer.json"))


def test_loss_mask_covers_assistant_tokens_only(sft_home):
    tok = _tokenizer(sft_home)
    rows = worked_rows(12) + [{"id": "tags-in-prompt", "prompt": "Repeat <think>: what is 2 + 2?",
                               "response": "<think>Two and two.</think> <answer>4</answer>"}]
    examples, skipped = sft.encode_examples(rows, tok, sft.ChatRenderer(sft_home / "moe"), max_length=128)
    assert skipped == [] and len(examples) == len(rows)
    for row, ex in zip(rows, examples):
        trained = [t for t, m in zip(ex.ids, ex.mask) if m]
        context = [t for t, m in zip(ex.ids, ex.mask) if not m]
        assert tok.decode(trained, skip_special_tokens=False) == row["response"] + EOS
        assert tok.decode(context, skip_special_tokens=False) == render_prompt(row["prompt"])
    # in a packed row, the labels the loss counts are exactly the responses + EOS, in order
    by_id = {r["id"]: r for r in rows}
    row = [0, 5, 12]
    inputs, labels = sft.collate(examples, [row], pad=tok.token_to_id("<|pad|>"))
    counted = labels[0][labels[0] != sft.IGNORE].tolist()
    assert tok.decode(counted, skip_special_tokens=False) == "".join(
        by_id[examples[i].id]["response"] + EOS for i in row)
    assert inputs.shape[1] == sum(len(examples[i].ids) for i in row) - 1
    kept = labels[0] != sft.IGNORE
    assert torch.equal(labels[0, :-1][kept[:-1]], inputs[0, 1:][kept[:-1]])  # labels are the next input token


def test_packing_keeps_examples_whole_within_max_length():
    """Rule: an example is never split; a row holds whole examples, at most max_length tokens in all;
    every example lands in exactly one row."""
    rng = random.Random(0)
    lengths = [rng.randint(5, 90) for _ in range(500)]
    rows = sft.pack(lengths, max_length=128, seed=3)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    assert sum(lengths) / (128 * len(rows)) > 0.9  # first-fit fills the rows
    assert rows == sft.pack(lengths, max_length=128, seed=3) != sft.pack(lengths, max_length=128, seed=4)


def test_an_example_longer_than_max_length_is_skipped_with_its_reason(sft_home):
    tok = _tokenizer(sft_home)
    rows = worked_rows(4) + [{"id": "long", "prompt": "Count.", "response": f"<think>{'one two ' * 60}</think> <answer>1</answer>"}]
    examples, skipped = sft.encode_examples(rows, tok, sft.ChatRenderer(sft_home / "moe"), max_length=100)
    assert [e.id for e in examples] == [f"ex{i}" for i in range(4)]
    assert len(skipped) == 1 and skipped[0]["id"] == "long" and skipped[0]["reason"].startswith("too_long:")


def test_the_data_position_is_a_function_of_the_step(sft_home):
    tok = _tokenizer(sft_home)
    examples, _ = sft.encode_examples(worked_rows(60), tok, sft.ChatRenderer(sft_home / "moe"), max_length=128)
    for packing in (True, False):
        cfg = dataclasses.replace(FAST, packing=packing)
        rows = sft.make_rows(examples, cfg)
        a = sft.RowStream(examples, rows, cfg, rank=0, world_size=1)
        b = sft.RowStream(examples, rows, cfg, rank=0, world_size=1)
        late = [b.micro_rows(s, m) for s in (7, 3) for m in range(b.accumulation)]
        assert late == [a.micro_rows(s, m) for s in (7, 3) for m in range(a.accumulation)]
        first_epoch = [tuple(r) for s in range(len(rows) // 8) for m in range(2) for r in a.micro_rows(s, m)]
        assert len(set(first_epoch)) == len(first_epoch)  # no row twice within an epoch


def test_the_chat_template_must_agree_with_the_task_format(sft_home, tmp_path):
    changed = tmp_path / "tok"
    shutil.copytree(sft_home / "moe", changed)
    template = (changed / "chat_template.jinja").read_text()
    (changed / "chat_template.jinja").write_text(template.replace("message['content']", "message['content'] + '\\n'"))
    with pytest.raises(ValueError, match="format.py"):
        sft.ChatRenderer(changed)("Compute 1 + 1.", "<think>One and one.</think> <answer>2</answer>")


def test_missing_or_malformed_sft_table_fails_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="sft.parquet"):
        sft.read_sft_table(tmp_path)
    pq.write_table(pa.table({"id": ["a"], "prompt": ["p"]}), tmp_path / "sft.parquet")
    with pytest.raises(ValueError, match=r"\['response'\]"):
        sft.read_sft_table(tmp_path)


@pytest.fixture(scope="module")
def moe_run(sft_home):
    """The reference run: the tiny-profile MoE, one epoch, tracked in MLflow as an asset would."""
    from training import tracking

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEEKFLOW_HOME", str(sft_home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        uri = tracking.configure(f"sqlite:///{sft_home}/mlflow.db")
        client = mlflow.MlflowClient()
        run = client.create_run(mlflow.get_experiment_by_name(tracking.EXPERIMENT).experiment_id)
        summary = run_sft(sft_home, "moe_run", "moe", FAST, {"tracking_uri": uri, "run_id": run.info.run_id,
                                                             "registered_model": "seekflow-sft-test"})
    return summary, client, run.info.run_id


def test_sft_lowers_the_loss_and_exports_a_registered_model(sft_home, moe_run):
    summary, client, run_id = moe_run
    history = json.loads((sft_home / "moe_run" / "history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert summary["steps"] == len(losses) == 11  # ceil(82 packed rows / 8) for one epoch
    print({k: summary[k] for k in ("validation_loss_start", "validation_loss", "final_loss", "tokens_per_second")})
    assert summary["validation_loss"] < summary["validation_loss_start"] - 2.0  # from ln(4096) = 8.3
    assert losses[-1] < losses[0] - 2.0
    assert summary["skipped_by_reason"] == {"format": 1}
    assert 0.4 < summary["assistant_token_share"] < 0.7 and summary["padding_share"] < 0.1
    export = Path(summary["export"])
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= {f.name for f in export.iterdir()}
    model = from_pretrained(export)
    assert model.config.n_routed_experts == 16 and model.config.num_nextn_predict_layers == 0
    for metric in ("loss", "val_loss", "lr", "grad_norm", "tokens_per_second", "assistant_token_share"):
        assert client.get_metric_history(run_id, metric), metric
    assert summary["registered_model"] == "seekflow-sft-test/1"


def test_an_interrupted_run_resumes_onto_the_same_trajectory(sft_home, moe_run, monkeypatch):
    class Interrupted(Exception):
        pass

    real = sft.save_checkpoint

    def save_then_crash(engine, ckpt_dir, step, *args, **kwargs):
        path = real(engine, ckpt_dir, step, *args, **kwargs)
        if step == 4:
            raise Interrupted
        return path

    monkeypatch.setattr(sft, "save_checkpoint", save_then_crash)
    with pytest.raises(Interrupted):
        run_sft(sft_home, "resumed", "moe", FAST)
    monkeypatch.setattr(sft, "save_checkpoint", real)
    resumed = run_sft(sft_home, "resumed", "moe", FAST)
    assert resumed["resumed_from_step"] == 4
    reference = json.loads((sft_home / "moe_run" / "history.json").read_text())
    again = json.loads((sft_home / "resumed" / "history.json").read_text())
    assert [h["step"] for h in again] == [h["step"] for h in reference]
    for key in ("loss", "val_loss"):
        assert [h[key] for h in again if key in h] == pytest.approx([h[key] for h in reference if key in h], rel=1e-5)
    a, b = from_pretrained(resumed["export"]).state_dict(), from_pretrained(moe_run[0]["export"]).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_a_new_base_model_starts_afresh_instead_of_resuming_the_old_run(sft_home):
    # what a rebuilt upstream looks like: the same input folder, other weights in it
    base = sft_home / "rebased_base"
    shutil.copytree(sft_home / "dense", base)
    cfg = dataclasses.replace(FAST, packing=False, epochs=0.5)
    first = run_sft(sft_home, "rebased", "rebased_base", cfg)
    assert first["resumed_from_step"] == 0
    shutil.rmtree(base)
    shutil.copytree(first["export"], base)  # the trained student becomes the new base
    second = run_sft(sft_home, "rebased", "rebased_base", cfg)
    # trained again from the new weights, not the finished old run resumed and exported once more
    assert second["resumed_from_step"] == 0 and second["checkpoint"] != first["checkpoint"]
    assert second["validation_loss_start"] == pytest.approx(first["validation_loss"], rel=1e-3)
    assert second["validation_loss"] < first["validation_loss"]


def test_a_dense_student_trains_without_packing(sft_home):
    summary = run_sft(sft_home, "dense_run", "dense", dataclasses.replace(FAST, packing=False, epochs=0.5))
    print({k: summary[k] for k in ("validation_loss_start", "validation_loss", "padding_share")})
    assert summary["dense"] and summary["validation_loss"] < summary["validation_loss_start"] - 1.0
    model = from_pretrained(summary["export"])
    assert model.config.n_routed_experts == 0 and model.moe_layers() == {}


def test_export_keeps_mtp_modules_only_when_the_module_has_them(sft_home, tmp_path):
    from training import distributed
    from training.expert_parallel import apply_expert_parallel
    from training.export import export_model

    distributed.init()  # expert-parallel wrappers live on DeepSpeed's process groups
    for mtp in (True, False):
        model = from_pretrained(sft_home / "moe", mtp=mtp)
        reference = {k: v.clone() for k, v in model.state_dict().items()}
        apply_expert_parallel(model, 1)
        out = export_model(model, model.config, sft_home / "moe", tmp_path / f"export_mtp_{mtp}")
        loaded = from_pretrained(out, mtp=True)
        assert loaded.config.num_nextn_predict_layers == int(mtp)
        assert loaded.state_dict().keys() == reference.keys()
        assert all(torch.equal(loaded.state_dict()[k], reference[k]) for k in reference)
        assert (out / "tokenizer.json").is_file() and not (tmp_path / f".export_mtp_{mtp}.partial").exists()
