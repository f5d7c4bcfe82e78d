"""The wheel carries recipes/: build it, install it into a clean venv, list the recipes there."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_with_recipes(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("multiverse-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    # Only what the recipe loader imports (recipes name their task, checked against multiverse.tasks, which
    # needs numpy and tokenizers); the wheel itself without its other dependencies.
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "pydantic", "pyyaml", "numpy", "tokenizers<0.23"],
                   check=True, timeout=300)
    out = subprocess.run(
        [str(py), "-c", "import multiverse.targets as t; print(t.recipes_dir()); "
         "print(sorted(t.load_targets())); print(sorted(t.load_model_recipes()))"],
        check=True, capture_output=True, text=True, cwd=tmp_path, timeout=120).stdout.splitlines()
    assert str(env_dir) in out[0]  # the installed copy, not the source tree
    assert "icelake" in out[1] and "arm64" in out[1]
    assert "distilbert-base-uncased-emotion" in out[2]
