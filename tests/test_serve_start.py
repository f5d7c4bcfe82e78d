"""`multiverse serve` that cannot bind exits 1 with one line, never SIGABRT (exit 134) while the model loads."""

from __future__ import annotations

import socket
import subprocess
import sys


def test_a_port_in_use_exits_1_with_a_hint_not_an_abort(tiny_bundles):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for _ in range(3):  # the abort was a race with the background model load: 6 of 8 runs before the fix
            proc = subprocess.run([sys.executable, "-m", "multiverse.cli", "serve", str(tiny_bundles["feature-extraction"]),
                                   "--host", "127.0.0.1", "--port", str(port)], capture_output=True, text=True, timeout=120)
            assert proc.returncode == 1, proc.stderr[-2000:]
            assert "terminate called" not in proc.stderr and "Choose another --port or --host" in proc.stderr
