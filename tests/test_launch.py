"""training/launch.py: the commands, sbatch scripts and pod specs a user's cluster would receive."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from training.launch import StageConfig, local_command, render_pod, render_sbatch
from training.settings import LaunchConfig, ProfileError, load_profile


def test_local_commands():
    cfg = Path("/runs/stage.json")
    assert local_command("training.pretrain", cfg, LaunchConfig()) == [
        sys.executable, "-m", "training.pretrain", "--config", str(cfg)]
    ds = local_command("training.pretrain", cfg, LaunchConfig(nproc_per_node=8))
    assert ds[:3] == ["deepspeed", "--num_gpus", "8"] and ds[-4:] == ["--module", "training.pretrain", "--config", str(cfg)]
    tr = local_command("training.pretrain", cfg, LaunchConfig(nproc_per_node=2, launcher="torchrun"))
    assert "torch.distributed.run" in tr and tr[tr.index("--nproc_per_node") + 1] == "2"


@pytest.mark.parametrize("launcher", ["deepspeed", "torchrun"])
def test_sbatch_one_task_per_node_with_rendezvous(tmp_path, launcher):
    launch = LaunchConfig(kind="slurm", nodes=4, nproc_per_node=8, launcher=launcher, slurm_partition="gpu",
                          slurm_extra=["--qos=high"])
    script = render_sbatch("training.pretrain", tmp_path / "stage.json", launch, "seekflow-v3_base", tmp_path)
    assert "#SBATCH --nodes=4" in script and "#SBATCH --ntasks-per-node=1" in script
    assert "#SBATCH --gpus-per-node=8" in script and "#SBATCH --partition=gpu" in script
    assert "#SBATCH --qos=high" in script
    if launcher == "torchrun":
        assert "--nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint $head_node:29500" in script
    else:
        assert "--num_nodes 4 --num_gpus 8 --node_rank $SLURM_NODEID --master_addr $head_node" in script
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    if shutil.which("bash"):
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0  # the script parses


def test_pod_spec(tmp_path):
    launch = LaunchConfig(kind="k8s", k8s_image="registry/seekflow:1", k8s_gpus=8, k8s_volume_claim="seekflow-home")
    pod = render_pod("training.pretrain", tmp_path / "stage.json", launch, "v3_base", "seekflow-v3-base-1")
    container = pod["spec"]["containers"][0]
    assert container["image"] == "registry/seekflow:1"
    assert container["command"][:3] == ["deepspeed", "--num_gpus", "8"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "seekflow-home"
    with pytest.raises(ProfileError, match="launch.k8s_volume_claim"):
        render_pod("training.pretrain", tmp_path / "s.json", LaunchConfig(kind="k8s"), "v3_base", "p")


def test_stage_config_round_trip_and_bad_fields(tmp_path):
    profile = load_profile("tiny")
    path = StageConfig(stage="v3_base", profile=profile.to_dict(), output_dir=str(tmp_path)).write(tmp_path / "s.json")
    assert StageConfig.read(path).resolved_profile() == profile
    with pytest.raises(ProfileError, match="launch.kind is 'ssh'"):
        load_profile("tiny", {"launch.kind": "ssh"})
    with pytest.raises(ProfileError, match="pretrain.global_batch_size"):
        load_profile("tiny", {"pretrain.global_batch_size": 10, "pretrain.micro_batch_size": 4})
