"""The OpenAPI document is as strict as the server: a bounded schemathesis run (the real fuzzer, its CLI, all
its checks: no 5xx, documented statuses and content types, responses match their schemas, schema-valid
requests accepted, schema-invalid ones rejected) against each task's tiny bundle (and the feature-extraction OpenVINO IR bundle), served by the
``multiverse serve`` server path in a thread. About 100 generated cases per operation plus schemathesis'
coverage cases: 25-30 s on a quiet 2-core machine (90 s measured with the load average at 20)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from serve_fixtures import TASKS, ThreadServer

from multiverse.serve.app import create_app
from multiverse.serve.settings import ServeSettings

#: Operations each task's run covers: the feature-extraction run also covers the GET routes once.
_SELECT = {"feature-extraction": [], "ranking": ["--include-method", "POST"],
           "text-classification": ["--include-method", "POST"], "token-classification": ["--include-method", "POST"]}


@pytest.mark.parametrize("runtime, task", [("onnxruntime", task) for task in TASKS]
                         + [("openvino", "feature-extraction")])
def test_schemathesis_finds_no_violation_and_no_5xx(request, runtime, task, tmp_path):
    # The one rule no schema can state is the token limit with `truncate: false` (422 InputTooLong). The tiny
    # WordPiece vocab gives at most one token per character, so with 60 characters a text, or a pair plus its
    # 3 special tokens (123), never exceeds the 128-token limit and every schema-valid request is answered.
    # The OpenVINO IR bundle gets the feature-extraction run (every route that task opens, the GET routes too),
    # with fewer generated cases: the schema is the task's, what differs is the runtime under the same requests.
    if runtime == "openvino":
        pytest.importorskip("openvino")
        path, examples = request.getfixturevalue("tiny_ov_bundles")[task].path, "10"
    else:
        path, examples = Path(request.getfixturevalue("tiny_bundles")[task]), "100"
    settings = ServeSettings(max_batch=8, max_chars=60, warmup=False)
    with ThreadServer(create_app(path, settings), settings) as srv:
        srv.wait_ready(60)
        cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{srv.url}/openapi.json", "--checks", "all",
               "--max-examples", examples, "--seed", "7", "--workers", "1", "--phases", "coverage,fuzzing",
               "--request-timeout", "20", "--report-dir", str(tmp_path), *_SELECT[task]]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                             cwd=tmp_path)  # schemathesis keeps a .schemathesis/ cache in its working folder
    out = run.stdout + run.stderr
    assert run.returncode == 0 and "No issues found" in out, out[-6000:]


def test_openapi_lists_only_the_routes_of_the_task_and_is_strict(tiny_bundles):
    settings = ServeSettings(max_batch=8, max_chars=200, warmup=False)
    seen = {}
    for task in ("feature-extraction", "ranking"):
        with ThreadServer(create_app(Path(tiny_bundles[task]), settings), settings) as srv:
            srv.wait_ready(60)
            with srv.client() as c:
                seen[task] = c.get("/openapi.json").json()
                if task == "feature-extraction":  # still routed, only hidden: a clear 422
                    r = c.post("/rerank", json={"query": "q", "texts": ["p"]})
                    assert r.status_code == 422 and r.json()["error_type"] == "WrongTask"
    fe, rk = set(seen["feature-extraction"]["paths"]), set(seen["ranking"]["paths"])
    assert {"/", "/predict", "/embed", "/similarity", "/v1/embeddings", "/embeddings", "/v1/models"} <= fe
    assert "/rerank" not in fe and "/rerank" in rk and not {"/embed", "/v1/embeddings", "/similarity"} & rk
    body = seen["feature-extraction"]["paths"]["/embed"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    text, batch = body["properties"]["inputs"]["anyOf"]
    assert (text["minLength"], text["maxLength"], batch["minItems"], batch["maxItems"]) == (1, 200, 1, 8)
    assert body["properties"]["dimensions"]["anyOf"][0] == {"enum": [0, 32]}  # the tiny model's size
