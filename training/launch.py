"""How a training stage is started: its config file, and the command for this machine, Slurm or Kubernetes.

A training asset writes the stage's resolved config (`StageConfig`, JSON) and hands it to a launcher
(pipelines/launcher.py runs it through Dagster Pipes). This module only builds things: the command
line (`local`), the sbatch script (`slurm`, from infra/slurm/train.sbatch) or the pod spec (`k8s`,
from infra/k8s/train-pod.yaml). Every entrypoint is `python -m training.<stage> --config FILE`.

    local, 1 process          python -m training.pretrain --config FILE
    local, N processes        deepspeed --num_gpus N --module training.pretrain --config FILE
                              (or torchrun --nproc_per_node N -m training.pretrain --config FILE)
    slurm, M nodes x N        srun, one task per node, each running torchrun (c10d rendezvous on the
                              first node) or deepspeed --no_ssh with its node rank
    k8s                       one pod per run; multi-node pods are left to a JobSet/PyTorchJob
"""

from __future__ import annotations

import hashlib
import json
import shlex
import string
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from training.settings import REPO_ROOT, LaunchConfig, Profile, ProfileError, profile_from_dict, seekflow_home

SBATCH_TEMPLATE = REPO_ROOT / "infra" / "slurm" / "train.sbatch"
POD_TEMPLATE = REPO_ROOT / "infra" / "k8s" / "train-pod.yaml"


@dataclass
class StageConfig:
    """Everything a training process needs; written by the asset, read by the entrypoint."""

    stage: str  # the asset name, e.g. v3_base
    profile: dict  # the resolved profile (Profile.to_dict())
    output_dir: str  # checkpoints/, export/, logs/ go here
    inputs: dict[str, str] = field(default_factory=dict)  # e.g. shards, tokenizer directories
    mlflow: dict = field(default_factory=dict)  # tracking_uri, run_id, registered_model, alias

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2, default=str))
        return path

    @classmethod
    def read(cls, path: Path) -> "StageConfig":
        data = json.loads(Path(path).read_text())
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ProfileError(f"{path}: unknown field(s) {unknown}; accepted: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)

    def resolved_profile(self) -> Profile:
        return profile_from_dict(self.profile)

    def checkpoint_dir(self, section: str) -> Path:
        """`<output_dir>/checkpoints/<fingerprint>`: a restart with the same settings and inputs
        resumes from here; changed settings or inputs start afresh in another folder (a checkpoint
        of another run is never resumed by mistake). Cadence fields do not count."""
        cadence = {"log_every", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints", "threads",
                   "profile_step", "sandbox_workers"}
        settings = {k: v for k, v in self.profile[section].items() if k not in cadence}
        h = hashlib.sha256(json.dumps({"model": self.profile["model"], section: settings}, sort_keys=True,
                                      default=str).encode())
        for name, path in sorted(self.inputs.items()):
            h.update(name.encode())
            _digest_inputs(Path(path), h)
        return Path(self.output_dir) / "checkpoints" / h.hexdigest()[:12]


def _digest_inputs(path: Path, h) -> None:
    """Names, sizes and mtimes of an input's files (cheap, and changes whenever an asset rewrites them)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.exists() else []
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path.parent)}:{st.st_size}:{st.st_mtime_ns}".encode())


def _launcher(launch: LaunchConfig) -> str:
    if launch.launcher != "auto":
        return launch.launcher
    return "deepspeed" if launch.world_size > 1 else "python"


def local_command(module: str, config_path: Path, launch: LaunchConfig) -> list[str]:
    launcher = _launcher(launch)
    n = str(launch.nproc_per_node)
    if launcher == "python":
        return [sys.executable, "-m", module, "--config", str(config_path)]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", n,
                "--master_port", str(launch.master_port), "-m", module, "--config", str(config_path)]
    return ["deepspeed", "--num_gpus", n, "--master_port", str(launch.master_port),
            "--module", module, "--config", str(config_path)]


def _node_command(module: str, config_path: Path, launch: LaunchConfig) -> str:
    """What each Slurm task (one per node) runs; $head_node and $SLURM_NODEID expand on the node."""
    n, port, cfg = launch.nproc_per_node, launch.master_port, shlex.quote(str(config_path))
    if _launcher(launch) == "torchrun":
        return (f"python -m torch.distributed.run --nnodes {launch.nodes} --nproc_per_node {n} "
                f"--rdzv_backend c10d --rdzv_endpoint $head_node:{port} -m {module} --config {cfg}")
    return (f"deepspeed --no_ssh --num_nodes {launch.nodes} --num_gpus {n} --node_rank $SLURM_NODEID "
            f"--master_addr $head_node --master_port {port} --module {module} --config {cfg}")


def render_sbatch(module: str, config_path: Path, launch: LaunchConfig, job_name: str, log_dir: Path) -> str:
    lines = []
    if launch.slurm_partition:
        lines.append(f"#SBATCH --partition={launch.slurm_partition}")
    if launch.slurm_account:
        lines.append(f"#SBATCH --account={launch.slurm_account}")
    lines += [f"#SBATCH {extra}" for extra in launch.slurm_extra]
    # single-quoted for `bash -c` in the template: $head_node (exported) and $SLURM_NODEID expand on
    # each node (string.Template inserts values verbatim)
    inner = _node_command(module, config_path, launch)
    return string.Template(SBATCH_TEMPLATE.read_text()).substitute(
        job_name=job_name, nodes=launch.nodes, nproc_per_node=launch.nproc_per_node,
        cpus_per_task=launch.slurm_cpus_per_task, time=launch.slurm_time, log_dir=log_dir,
        sbatch_lines="\n".join(lines), repo=REPO_ROOT, seekflow_home=seekflow_home(),
        launcher=_launcher(launch), inner=inner,
    )


def render_pod(module: str, config_path: Path, launch: LaunchConfig, stage: str, pod_name: str) -> dict:
    if launch.nodes > 1:
        raise ProfileError(f"launch.nodes is {launch.nodes}; launch.kind 'k8s' runs one pod (one node): use "
                           "'slurm' for several nodes, or a PyTorchJob/JobSet around the same command")
    if not launch.k8s_volume_claim:
        raise ProfileError("launch.k8s_volume_claim is empty; the pod needs a PersistentVolumeClaim mounted at "
                           "SEEKFLOW_HOME to read the shards and write checkpoints")
    pod_launch = LaunchConfig(**{**asdict(launch), "kind": "local", "nproc_per_node": launch.k8s_gpus})
    command = local_command(module, config_path, pod_launch)
    command[0] = "python" if command[0] == sys.executable else command[0]
    text = string.Template(POD_TEMPLATE.read_text()).substitute(
        pod_name=pod_name, namespace=launch.k8s_namespace, stage=stage, image=launch.k8s_image,
        command_json=json.dumps(command), seekflow_home=seekflow_home(), gpus=launch.k8s_gpus,
        volume_claim=launch.k8s_volume_claim,
    )
    return yaml.safe_load(text)
