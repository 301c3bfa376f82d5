"""The Dagster web server starts on a free localhost port and its GraphQL API lists every group's assets."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

from training.settings import REPO_ROOT

QUERY = '{"query": "{ assetNodes { assetKey { path } groupName } }"}'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_webserver_lists_every_group(seekflow_home):
    port = _free_port()
    bin_dir = os.path.dirname(sys.executable)
    proc = subprocess.Popen(
        [f"{bin_dir}/dagster-webserver", "-w", str(REPO_ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        nodes = None
        # NOTE: while the code location is still loading, GraphQL answers with no asset at all
        while time.monotonic() < deadline and not nodes:
            assert proc.poll() is None, "dagster-webserver exited early"
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=QUERY.encode(),
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=10) as resp:
                    nodes = json.load(resp)["data"]["assetNodes"]
            except (OSError, KeyError, TypeError):
                pass
            if not nodes:
                time.sleep(1)
        assert nodes, "no asset listed by GraphQL within 180 s"
        by_key = {"/".join(n["assetKey"]["path"]): n["groupName"] for n in nodes}
        expected = {"web_documents": "corpus", "pretraining_shards": "corpus", "v3_base": "pretraining",
                    "reasoning_tasks": "r1_zero", "r1_zero": "r1_zero", "cold_start_sft": "r1", "r1": "r1",
                    "distilled_students": "distillation", "eval_report": "evaluation"}
        assert {k: by_key.get(k) for k in expected} == expected
    finally:
        proc.terminate()
        proc.wait(timeout=60)
