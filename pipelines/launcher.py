"""The `launcher` resource: runs a training entrypoint through Dagster Pipes, locally, on Slurm or on Kubernetes.

Which one comes from the profile's `launch:` section (or this resource's `kind` to override it per
deployment, e.g. SEEKFLOW_LAUNCH_KIND=slurm on the cluster's code location):

- local: `PipesSubprocessClient` runs the command from training/launch.py (one process, or the
  deepspeed / torchrun launcher over N GPUs). Log lines and the final metadata come back through
  Pipes; stdout and stderr go to the run's compute logs.
- slurm: the rendered sbatch script is submitted with `sbatch --wait` under the same Pipes client;
  the Pipes context travels in the job's environment and messages come back through a file under
  SEEKFLOW_HOME (which the cluster nodes must share).
- k8s: the rendered pod runs through dagster-k8s' `PipesK8sClient` (`pip install dagster-k8s`).

A process that fails raises `dg.Failure` carrying the tail of every rank's log.
"""

import os
import uuid
from pathlib import Path

import dagster as dg
from dagster._core.errors import DagsterPipesExecutionError  # not re-exported at the top level

from training.launch import local_command, render_pod, render_sbatch
from training.reporting import log_tail
from training.settings import REPO_ROOT, LaunchConfig, seekflow_home


class TrainingLauncher(dg.ConfigurableResource):
    kind: str = ""  # empty: the profile's launch.kind; else "local", "slurm" or "k8s"

    def run(self, context: dg.AssetExecutionContext, module: str, config_path: Path, launch: LaunchConfig,
            output_dir: Path, stage: str) -> dg.PipesClientCompletedInvocation:
        kind = self.kind or os.environ.get("SEEKFLOW_LAUNCH_KIND") or launch.kind
        # NOTE: two CPU trainers sharing the same cores slow each other down many times over (OpenMP
        # threads spin at barriers); OMP_WAIT_POLICY=PASSIVE in the environment trades some speed
        # alone for much better behaviour shared. The default keeps PyTorch's own setting.
        env = {"PYTHONUNBUFFERED": "1", "SEEKFLOW_HOME": str(seekflow_home())}
        try:
            if kind == "local":
                command = local_command(module, config_path, launch)
                context.log.info(f"launching: {' '.join(command)}")
                return dg.PipesSubprocessClient(cwd=str(REPO_ROOT), env=env).run(
                    context=context, command=command)
            if kind == "slurm":
                return self._slurm(context, module, config_path, launch, output_dir, stage, env)
            if kind == "k8s":
                return self._k8s(context, module, config_path, launch, stage)
        except DagsterPipesExecutionError as e:
            raise dg.Failure(
                description=f"{stage}: the training process failed ({e}). Last log lines:\n{log_tail(output_dir)}",
                metadata={"logs": dg.MetadataValue.path(str(output_dir / "logs"))},
            ) from None
        raise dg.Failure(f"launch.kind is {kind!r}; accepted: 'local', 'slurm', 'k8s'")

    def _slurm(self, context, module, config_path, launch, output_dir, stage, env):
        script = output_dir / "launch" / f"{stage}.sbatch"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(render_sbatch(module, config_path, launch, f"seekflow-{stage}", output_dir / "logs"))
        messages = seekflow_home() / "pipes" / f"{context.run_id}-{stage}.jsonl"
        messages.parent.mkdir(parents=True, exist_ok=True)
        context.log.info(f"submitting {script} with sbatch --wait")
        client = dg.PipesSubprocessClient(cwd=str(REPO_ROOT), env=env,
                                          message_reader=dg.PipesFileMessageReader(str(messages)))
        return client.run(context=context, command=["sbatch", "--wait", "--export=ALL", str(script)])

    def _k8s(self, context, module, config_path, launch, stage):
        try:
            from dagster_k8s import PipesK8sClient
        except ImportError:
            raise dg.Failure("launch.kind 'k8s' needs dagster-k8s: pip install 'seekflow[k8s]'") from None
        pod = render_pod(module, config_path, launch, stage, f"seekflow-{stage.replace('_', '-')}-{uuid.uuid4().hex[:8]}")
        return PipesK8sClient().run(context=context, namespace=launch.k8s_namespace, base_pod_meta=pod["metadata"],
                                    base_pod_spec=pod["spec"])
