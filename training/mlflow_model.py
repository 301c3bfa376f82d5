"""Models in the MLflow registry: a Hugging Face export wrapped as an MLflow pyfunc model.

The registered artifact is the export directory itself (config.json, model.safetensors, tokenizer
files: loadable by transformers as `DeepseekV3ForCausalLM`), plus a pyfunc wrapper so that
`mlflow.pyfunc.load_model("models:/seekflow-v3-base@current").predict(["Once upon"])` generates text.
The wrapper is pickled by reference: loading it needs the `seekflow` package installed.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import mlflow.pyfunc


class SeekflowCausalLM(mlflow.pyfunc.PythonModel):
    """predict(list of prompts | DataFrame with a `prompt` column) -> list of greedy continuations."""

    def load_context(self, context):
        from tokenizers import Tokenizer

        from training.model import from_pretrained

        directory = Path(context.artifacts["hf_export"])
        self.model = from_pretrained(directory)
        self.model.eval()
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))

    def predict(self, context, model_input, params=None):
        from training.model import generate

        prompts = list(model_input["prompt"]) if hasattr(model_input, "columns") else list(model_input)
        max_new = int((params or {}).get("max_new_tokens", 32))
        ids = [self.tokenizer.encode(p).ids or [0] for p in prompts]
        eos = self.tokenizer.token_to_id("<|end_of_text|>")
        out = generate(self.model, ids, max_new, temperature=0.0, stop_token_ids=[eos] if eos is not None else [])
        tokens, _ = out.as_lists()
        return [self.tokenizer.decode(t) for t in tokens]


def log_and_register(export_dir: Path, name: str, aliases: list[str] = ()) -> str:
    """Log the export under the active run as `model` and register it as `name`; returns the version."""
    info = mlflow.pyfunc.log_model(
        name="model", python_model=SeekflowCausalLM(), artifacts={"hf_export": str(export_dir)},
        pip_requirements=["seekflow", "torch", "tokenizers", "safetensors"],  # not inferred: no env probing
        registered_model_name=name,
    )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    for alias in ["current", *aliases]:
        client.set_registered_model_alias(name, alias, version)
    return version
