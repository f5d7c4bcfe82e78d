"""Helpers of the serve tests: a real ``multiverse serve`` process, and an app served in a thread.

The bundles come from the session fixtures of ``conftest.py`` (``tiny_bundles``, ``minilm_bundle``),
shared with the rest of the suite.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

TASKS = ("text-classification", "feature-extraction", "token-classification", "ranking")

_ROOT = Path(tempfile.mkdtemp(prefix="multiverse-serve-tests-"))
atexit.register(shutil.rmtree, _ROOT, True)


class ThreadServer:
    """An app served by uvicorn in a background thread of this process (port 0, loopback)."""

    def __init__(self, app, settings=None):
        """With ``settings`` (a ``ServeSettings``), the server is the one ``multiverse serve`` runs
        (``multiverse.serve.server.build_server``: connection timeouts, cap, drain) on port 0; without,
        a plain uvicorn server."""
        import uvicorn

        if settings is not None:
            from dataclasses import replace

            from multiverse.serve.server import build_server

            self.server = build_server(app, replace(settings, host="127.0.0.1", port=0, log_level="warning"))
        else:
            self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                        access_log=False, lifespan="on", timeout_graceful_shutdown=10))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("in-thread server did not start")
            time.sleep(0.01)
        self.port = port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 30), **kw)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while c.get("/v2/health/ready").status_code != 200:
                if time.monotonic() > deadline:
                    raise TimeoutError("not ready")
                time.sleep(0.02)


class Server:
    """``python -m multiverse.cli serve BUNDLE --port 0 ...`` on 127.0.0.1, with its log in a file."""

    def __init__(self, bundle_path: Path | None, *args: str, env: dict | None = None, cmd: list[str] | None = None):
        """``cmd`` replaces the ``multiverse serve`` command line (it must log uvicorn's "running on" line)."""
        self.log_path = _ROOT / f"server-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")
        cmd = cmd or [sys.executable, "-m", "multiverse.cli", "serve", str(bundle_path), "--host", "127.0.0.1",
                      "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._log,
                                     env={**os.environ, **(env or {})})
        self.url = self._wait_for_port()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_for_port(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", self.log())
            if m:
                return f"http://127.0.0.1:{m.group(1)}"
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise TimeoutError(f"server did not start:\n{self.log()}")

    def wait_ready(self, timeout: float = 60, headers: dict | None = None) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5) as c:
            while time.monotonic() < deadline:
                if c.get("/v2/health/ready", headers=headers).status_code == 200:
                    return
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
                time.sleep(0.05)
        raise TimeoutError(f"server not ready:\n{self.log()}")

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 30), **kw)

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
