"""`make ui`: the Dagster UI and the MLflow UI on localhost, until Ctrl-C.

    python -m pipelines.ui [--dagster-port 3000] [--mlflow-port 5000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from pipelines.home import dagster_home
from training.settings import REPO_ROOT
from training.tracking import default_artifact_root, default_tracking_uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dagster-port", type=int, default=3000)
    parser.add_argument("--mlflow-port", type=int, default=5000)
    args = parser.parse_args(argv)
    dagster_home()
    env = {**os.environ, "SEEKFLOW_MLFLOW_UI": f"http://127.0.0.1:{args.mlflow_port}"}
    bin_dir = os.path.dirname(sys.executable)
    # NOTE: `dagster dev` ignores SIGINT/SIGTERM when started from a script; `env --default-signal`
    # restores them so Ctrl-C (or a terminate) stops it and its children.
    dagster = subprocess.Popen(
        ["env", "--default-signal=INT,TERM", f"{bin_dir}/dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml"),
         "-h", "127.0.0.1", "-p", str(args.dagster_port)], cwd=REPO_ROOT, env=env)
    mlflow = subprocess.Popen(
        [f"{bin_dir}/mlflow", "ui", "--backend-store-uri", os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(),
         "--default-artifact-root", default_artifact_root(), "--host", "127.0.0.1", "--port", str(args.mlflow_port)],
        cwd=REPO_ROOT, env=env)
    print(f"Dagster UI: http://127.0.0.1:{args.dagster_port}\nMLflow UI:  http://127.0.0.1:{args.mlflow_port}\nCtrl-C stops both.")
    try:
        dagster.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for p in (dagster, mlflow):
            p.terminate()
        for p in (dagster, mlflow):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
