"""CPU targets and model recipes: CPU knowledge is data (``recipes/``), not ``if`` chains.

A *target* names a CPU micro-architecture and says which dynamic-int8 configuration and
ONNX Runtime session options are correct on it. The key fact (ONNX Runtime's
quantization docs, "Data type selection"; measured here too): u8s8 GEMM
(uint8 activations × int8 weights) saturates in the ``VPMADDUBSW`` path on x86 CPUs
without VNNI, so targets without ``avx512_vnni`` ship uint8 weights (u8u8) and set
``session.x64quantprecision=1``.
"""

from __future__ import annotations

import functools
import platform
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import RecipeError

#: The ``/proc/cpuinfo`` flag of AVX-512 BF16 (Cooper Lake, Sapphire Rapids and later Xeons, AMD Zen 4): what
#: OpenVINO's CPU plugin needs to run layers in bf16 (oneDNN's ``avx512_core_bf16`` ISA; without it the plugin
#: compiles at f32 whatever ``INFERENCE_PRECISION_HINT`` asks). A target that requires it gets bf16 candidates.
BF16_FLAG = "avx512_bf16"
#: CPU flags an OpenVINO inference precision needs on the host that runs it (f32 needs none).
PRECISION_FLAGS = {"f32": (), "bf16": (BF16_FLAG,)}
#: Flags any one of which means a CPU has a bf16 path: the bf16 extensions, and AMX-INT8, whose CPUs (Sapphire
#: Rapids and later Xeons) all have AMX-BF16 and AVX512_BF16 too.
BF16_CAPABLE_FLAGS = (BF16_FLAG, "amx_bf16", "amx_int8")


def has_bf16_path(arch: str | None, required_flags) -> bool:
    """Whether every CPU with ``required_flags`` (a target's) has a bf16 path for OpenVINO's CPU plugin; on a
    non-x86-64 ``arch`` the question is left to the plugin (True: it picks its own default precision there)."""
    return arch not in (None, "x86_64") or any(f in BF16_CAPABLE_FLAGS for f in required_flags)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IsaSpec(_Strict):
    arch: Literal["x86_64", "aarch64"]
    required_flags: tuple[str, ...] = ()


class FusionSpec(_Strict):
    gelu_approximation: bool = False


class QuantConfig(_Strict):
    """Dynamic int8 configuration for ``onnxruntime.quantization.quantize_dynamic``.

    ``activation_type`` is always uint8 for dynamic quantization (ORT computes the
    activation scale at run time); it is recorded for the manifest.
    ``nodes_to_exclude`` keeps those nodes in fp32; ``op_types`` limits what is quantized.
    """

    mode: Literal["dynamic"] = "dynamic"
    weight_type: Literal["int8", "uint8"] = "int8"
    activation_type: Literal["uint8"] = "uint8"
    per_channel: bool = True
    reduce_range: bool = False
    op_types: tuple[str, ...] = ("MatMul", "Attention", "Gather", "EmbedLayerNormalization")
    nodes_to_exclude: tuple[str, ...] = ()
    smooth_alpha: float | None = Field(None, gt=0, lt=1, description="SmoothQuant strength (see smooth.py); None = off")

    def label(self) -> str:
        """Short human-readable name, e.g. ``s8 per-channel -Gather (2 fp32)``."""
        parts = ["s8" if self.weight_type == "int8" else "u8",
                 "per-channel" if self.per_channel else "per-tensor"]
        if self.reduce_range:
            parts.append("reduce_range")
        if self.smooth_alpha is not None:
            parts.append(f"smooth α={self.smooth_alpha:g}")
        default_ops = QuantConfig().op_types
        dropped = [o for o in default_ops if o not in self.op_types]
        if dropped:
            parts.append("-" + "-".join(dropped))
        if self.nodes_to_exclude:
            parts.append(f"({len(self.nodes_to_exclude)} fp32)")
        return " ".join(parts)


class Target(_Strict):
    """A CPU target recipe (``recipes/targets/<name>.yaml``)."""

    name: str
    description: str
    priority: int = Field(0, description="Higher wins when several targets match the host in `native`.")
    aliases: tuple[str, ...] = ()
    isa: IsaSpec
    fusion: FusionSpec = FusionSpec()
    quantization: QuantConfig = QuantConfig()
    session: dict[str, str] = Field(default_factory=dict, description="ORT session config entries")

    @property
    def has_vnni(self) -> bool:
        return "avx512_vnni" in self.isa.required_flags or "avx_vnni" in self.isa.required_flags

    @property
    def inference_precisions(self) -> tuple[str, ...]:
        """OpenVINO inference precisions a bundle for this target may be compiled with: ``("f32", "bf16")`` when the
        target requires :data:`BF16_FLAG` (every CPU it runs on has bf16), else ``("f32",)``."""
        return ("f32", "bf16") if BF16_FLAG in self.isa.required_flags else ("f32",)


class EvalSpec(_Strict):
    dataset: str
    split: str = "validation"
    text: str = "text"
    text_pair: str | None = None
    label: str | None = "label"
    metric: str | None = None


class ModelRecipe(_Strict):
    """A short model name (``recipes/models/<name>.yaml``) → Hub id, task and eval data."""

    name: str
    description: str = ""
    model: str
    revision: str | None = None
    task: str  # a key of multiverse.tasks.TASKS (checked below)
    eval: EvalSpec | None = None

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        from .tasks import TASKS

        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
        return task


def recipes_dir() -> Path:
    """Folder holding ``targets/`` and ``models/`` (shipped inside the wheel as ``multiverse/recipes``)."""
    return Path(str(resources.files("multiverse.recipes")))


def _load_yaml(path: Path, model: type[_Strict]):
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RecipeError(f"Cannot read recipe {path}: {exc}. Fix the YAML syntax.") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"Recipe {path} must be a YAML mapping, got {type(data).__name__}.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise RecipeError(f"Invalid recipe {path}: {problems}. See DESIGN.md §3 for the keys.") from exc


@functools.lru_cache(maxsize=None)
def load_targets(folder: str | None = None) -> dict[str, Target]:
    """All target recipes, by name. Raises RecipeError on an invalid file."""
    base = Path(folder) if folder else recipes_dir() / "targets"
    out: dict[str, Target] = {}
    for path in sorted(base.glob("*.yaml")):
        t = _load_yaml(path, Target)
        if t.name != path.stem:
            raise RecipeError(f"Recipe {path} has name {t.name!r}; rename the file or the name so they match.")
        out[t.name] = t
    return out


@functools.lru_cache(maxsize=None)
def load_model_recipes(folder: str | None = None) -> dict[str, ModelRecipe]:
    """All model recipes (short names), by name. Raises RecipeError on an invalid file."""
    base = Path(folder) if folder else recipes_dir() / "models"
    out: dict[str, ModelRecipe] = {}
    for path in sorted(base.glob("*.yaml")):
        out[path.stem] = _load_yaml(path, ModelRecipe)
    return out


def host_arch() -> str:
    """``x86_64`` or ``aarch64`` (``arm64`` is normalised to ``aarch64``)."""
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


@functools.lru_cache(maxsize=1)
def host_flags() -> frozenset[str]:
    """CPU feature flags of this host, lower case (``/proc/cpuinfo`` names, e.g. ``avx512_vnni``).

    Reads ``/proc/cpuinfo`` on Linux; elsewhere falls back to py-cpuinfo.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):
                    return frozenset(line.split(":", 1)[1].lower().split())
    except OSError:
        pass
    try:  # pragma: no cover - non-Linux hosts
        import cpuinfo

        return frozenset(f.lower() for f in cpuinfo.get_cpu_info().get("flags", []))
    except Exception:  # pragma: no cover
        return frozenset()


def host_cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo`` ``model name``), or ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def missing_isa(arch: str | None, required_flags, flags: frozenset[str] | None = None,
                host: str | None = None) -> list[str]:
    """Flags (and the architecture, as ``arch:<name>``) that an ISA needs and the host lacks; ``[]`` if it can run.

    ``arch`` None matches any host (a manifest written before the architecture was recorded).
    ``flags``/``host`` default to this host's ``/proc/cpuinfo`` flags and ``platform.machine()``.
    """
    flags = host_flags() if flags is None else flags
    host = host_arch() if host is None else host
    missing = [] if arch in (None, host) else [f"arch:{arch}"]
    return missing + [f for f in required_flags if f not in flags]


def missing_flags(target: Target, flags: frozenset[str] | None = None, arch: str | None = None) -> list[str]:
    """Flags (and arch, as ``arch:<name>``) that ``target`` requires and the host lacks; ``[]`` if it can run."""
    return missing_isa(target.isa.arch, target.isa.required_flags, flags, arch)


def detect_native(flags: frozenset[str] | None = None, arch: str | None = None) -> Target:
    """The highest-priority target this host can run.

    Raises RecipeError when no target matches (an unknown architecture).
    """
    candidates = [t for t in load_targets().values() if not missing_flags(t, flags, arch)]
    if not candidates:
        raise RecipeError(
            f"No target in {recipes_dir() / 'targets'} matches this host ({host_arch()}); "
            "name one with --target (see `multiverse targets`)."
        )
    return max(candidates, key=lambda t: t.priority)


def get_target(name: str) -> Target:
    """Target by name or alias; ``native`` detects the host. Raises RecipeError for an unknown name."""
    key = name.strip().lower()
    if key == "native":
        return detect_native()
    targets = load_targets()
    if key in targets:
        return targets[key]
    for t in targets.values():
        if key in t.aliases:
            return t
    raise RecipeError(
        f"Unknown target {name!r}. Known targets: {', '.join(sorted(targets))}, native. "
        "Run `multiverse targets` to see which one this host matches."
    )
