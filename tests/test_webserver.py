"""The Dagster web server starts on a free localhost port and its GraphQL API lists the assets."""

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


def test_webserver_lists_the_corpus_assets(seekflow_home):
    port = _free_port()
    bin_dir = os.path.dirname(sys.executable)
    proc = subprocess.Popen(
        [f"{bin_dir}/dagster-webserver", "-w", str(REPO_ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        nodes = None
        while time.monotonic() < deadline and nodes is None:
            assert proc.poll() is None, "dagster-webserver exited early"
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=QUERY.encode(),
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=10) as resp:
                    nodes = json.load(resp)["data"]["assetNodes"]
            except (OSError, KeyError, TypeError):
                time.sleep(1)
        assert nodes is not None, "no GraphQL answer within 180 s"
        by_key = {"/".join(n["assetKey"]["path"]): n["groupName"] for n in nodes}
        for asset in ("web_documents", "filtered_code", "deduplicated_corpus", "tokenizer", "pretraining_shards"):
            assert by_key.get(asset) == "corpus"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
