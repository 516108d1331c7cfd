"""Hugging Face Hub integration: load any zoo checkpoint, resolve names offline, push, model cards.

A checkpoint is a folder in the Hub layout written by ``ZooModel.save_pretrained``:
``config.json`` (the model's arguments, its registry name ``architecture``, ``format_version``
and ``aimle_zoo_version``), ``model.safetensors`` (weights and the adaptive estimator state) and
``README.md`` (the model card). Published checkpoints live on the Hub as ``aimle-zoo/<name>``;
the source tree bundles copies under ``checkpoints/<name>/``.

Example::

    import aimle_zoo

    model = aimle_zoo.from_pretrained("dvae-mnist")  # bundled copy, else the Hub or its cache
    model = aimle_zoo.from_pretrained("aimle-zoo/dvae-mnist", revision="v1")  # pinned, Hub
    model.save_pretrained("out/dvae", metrics={"nelbo": 61.2}, command="aimle-zoo train ...")
    aimle_zoo.push_to_hub("out/dvae", "aimle-zoo/dvae-mnist", dry_run=True)  # files, sizes

Everything goes through huggingface_hub's own API (``snapshot_download``, ``HfApi``), so the
usual settings apply: ``HF_HUB_OFFLINE=1`` (cache only), ``HF_HUB_CACHE`` or ``cache_dir``,
``HF_ENDPOINT``, ``HF_TOKEN``. Settings read from the environment are read when
huggingface_hub is imported.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from huggingface_hub import CommitInfo, HfApi, ModelCard, constants, snapshot_download
from huggingface_hub.errors import (
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ._io import atomic_file
from .models import ZooModel
from .models._base import (
    CHECKPOINT_FILES as CHECKPOINT_FILES,
    FORMAT_VERSION as FORMAT_VERSION,
    HUB_ORGANIZATION as HUB_ORGANIZATION,
    RECIPE_FILE as RECIPE_FILE,
    CheckpointConfigError as CheckpointConfigError,
    CheckpointCorruptError as CheckpointCorruptError,
    CheckpointError as CheckpointError,
    CheckpointMismatchError as CheckpointMismatchError,
    CheckpointNotFoundError as CheckpointNotFoundError,
    CheckpointVersionError as CheckpointVersionError,
    default_repo_id as default_repo_id,
    read_checkpoint_config as read_checkpoint_config,
)

#: Environment variable overriding the folder of bundled checkpoints.
CHECKPOINTS_ENV = "AIMLE_ZOO_CHECKPOINTS"

_SOURCE_CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"

_CARD = "README.md"


class HubPushError(RuntimeError):
    """The Hub could not be reached, refused the token, or rejected the commit."""


class UploadFile(NamedTuple):
    """One file ``push_to_hub`` uploads: its path in the repository and its size in bytes."""

    path: str
    size: int


# ----------------------------------------------------------------------------- resolution


def checkpoints_root() -> Path:
    """The folder of bundled checkpoints, one ``<name>/`` folder per published model.

    ``$AIMLE_ZOO_CHECKPOINTS`` if set, else ``checkpoints/`` at the top of the source tree
    (a wheel install has none, so names resolve through the Hub).
    """
    configured = os.environ.get(CHECKPOINTS_ENV)
    return Path(configured).expanduser() if configured else _SOURCE_CHECKPOINTS


def list_bundled_checkpoints() -> list[str]:
    """Sorted names of the bundled checkpoints (folders of the root holding a config.json)."""
    root = checkpoints_root()
    if not root.is_dir():
        return []
    return sorted(
        entry.name for entry in root.iterdir() if (entry / constants.CONFIG_NAME).is_file()
    )


def resolve_checkpoint(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
) -> Path:
    """The local folder holding checkpoint ``name_or_path``, downloaded if need be.

    Resolution order:

    1. an existing local folder (a ``Path`` or a path-like string is never a Hub id);
    2. without ``revision`` or ``force_download``: the Hub cache's copy of ``main``, looked up
       by huggingface_hub without any network request (a complete snapshot only), so a
       checkpoint once downloaded is the one loaded, online or offline;
    3. without ``revision``: a short name such as ``"dvae-mnist"`` or an ``aimle-zoo/<name>``
       id whose folder is bundled under :func:`checkpoints_root` (no network needed);
    4. the Hub through ``snapshot_download`` (config, weights and card of one commit), which
       honours ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE``/``cache_dir``, ``HF_ENDPOINT``,
       ``revision`` and ``local_files_only``, and falls back to its cache when the Hub cannot
       be reached. A ``revision`` (``"main"``, a tag or a commit) always takes this path, so
       ``revision="main"`` checks the Hub for a newer commit. A short name means
       ``aimle-zoo/<name>``.

    Args:
        local_files_only: ``True`` reads the Hub cache only; ``None`` or ``False`` lets
            ``HF_HUB_OFFLINE`` decide.

    Raises:
        CheckpointNotFoundError: no such folder; not a valid name; not in the cache while
            offline (with what to do); no such repository or revision on the Hub.
        ValueError: a ``revision`` was given for a local folder.
    """
    text = os.path.expanduser(os.fspath(name_or_path))
    if os.path.isdir(text):
        if revision is not None:
            raise ValueError(
                f"revision={revision!r} applies to Hub ids, but {text} is a local folder; "
                "drop the revision or pass the Hub id"
            )
        return Path(text)
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(text):
        raise CheckpointNotFoundError(
            f"there is no checkpoint folder at {text}; pass an existing folder written by "
            "save_pretrained, a bundled name or a Hub id"
        )
    repo_id = text if "/" in text else f"{HUB_ORGANIZATION}/{text}"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise CheckpointNotFoundError(
            f"{text!r} is neither a folder nor a valid checkpoint name or Hub id: {err}"
        ) from err
    namespace, name = repo_id.split("/")
    if revision is None and not force_download:
        cached = _cached_snapshot(repo_id, cache_dir)
        if cached is not None:
            return cached
        bundled = checkpoints_root() / name
        if namespace == HUB_ORGANIZATION and bundled.is_dir():
            return bundled
    try:
        return _download(
            repo_id, revision, cache_dir, bool(local_files_only), token, force_download
        )
    except CheckpointNotFoundError as err:
        if "/" in text and os.path.isdir(namespace):  # "runs/typo": a folder meant, surely
            raise CheckpointNotFoundError(
                f"there is no checkpoint folder at {text} (and no Hub repository {repo_id}); "
                f"check the folder name: {namespace}/ holds "
                f"{', '.join(sorted(p.name for p in Path(namespace).iterdir())[:8]) or 'nothing'}"
            ) from err
        raise


def _cached_snapshot(repo_id: str, cache_dir: str | Path | None) -> Path | None:
    """The Hub cache's complete snapshot of ``repo_id`` at ``main``, or ``None`` (no network)."""
    try:
        snapshot = snapshot_download(
            repo_id,
            cache_dir=cache_dir,
            local_files_only=True,
            allow_patterns=[*CHECKPOINT_FILES, RECIPE_FILE],
        )
    except LocalEntryNotFoundError:  # not cached, or only partly
        return None
    folder = Path(snapshot)
    # huggingface_hub checks completeness only against a cached file list; a snapshot filled
    # by single-file downloads (e.g. the card alone) has none
    if not all((folder / name).is_file() for name in CHECKPOINT_FILES):
        return None
    return folder


def _looks_like_path(text: str) -> bool:
    """Whether ``text`` is written as a file-system path rather than a name or Hub id."""
    return os.path.isabs(text) or text.startswith(".") or text.count("/") > 1 or "\\" in text


def _download(
    repo_id: str,
    revision: str | None,
    cache_dir: str | Path | None,
    local_files_only: bool,
    token: str | bool | None,
    force_download: bool,
) -> Path:
    """The snapshot folder of ``repo_id`` at ``revision`` from the Hub or its cache."""
    from . import __version__

    at_revision = f" at revision {revision!r}" if revision else ""
    try:
        snapshot = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            force_download=force_download,
            allow_patterns=[*CHECKPOINT_FILES, RECIPE_FILE],
            library_name="aimle_zoo",
            library_version=__version__,
        )
    except LocalEntryNotFoundError as err:
        if constants.HF_HUB_OFFLINE:
            reason = "HF_HUB_OFFLINE=1 forbids downloads"
        elif local_files_only:
            reason = "local_files_only=True forbids downloads"
        else:
            reason = "the Hub could not be reached"
        cache = os.fspath(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE
        raise CheckpointNotFoundError(
            f"checkpoint {repo_id!r}{at_revision} is not in the Hub cache {cache} and "
            f"{reason}. Either download it (connect, set HF_HUB_OFFLINE=0, keep "
            f"local_files_only=False), or use a bundled checkpoint ({_bundled_text()}), or "
            f"pass the path of a folder written by save_pretrained. ({err})"
        ) from err
    except RevisionNotFoundError as err:
        raise CheckpointNotFoundError(
            f"the Hub repository {repo_id!r} has no revision {revision!r}: {err}"
        ) from err
    except RepositoryNotFoundError as err:
        raise CheckpointNotFoundError(
            f"there is no Hub repository {repo_id!r} at {constants.ENDPOINT} (or it is private "
            f"or gated: pass a token). Bundled checkpoints: {_bundled_text()}. ({err})"
        ) from err
    return Path(snapshot)


def _bundled_text() -> str:
    names = list_bundled_checkpoints()
    return ", ".join(names) if names else f"none in {checkpoints_root()}"


# ----------------------------------------------------------------------------- loading


def from_pretrained(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    **overrides: Any,
) -> ZooModel:
    """Load any zoo checkpoint; the class is the ``architecture`` its ``config.json`` names.

    ``name_or_path`` is resolved by :func:`resolve_checkpoint` (local folder, bundled name,
    Hub id). ``overrides`` replace config values or are the load options ``map_location`` and
    ``strict``. The model is returned in eval mode.

    Raises:
        CheckpointError: see ``ZooModel.from_pretrained``; nothing is loaded.
    """
    return ZooModel.from_pretrained(
        name_or_path,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=bool(local_files_only),
        token=token,
        **overrides,
    )


# ----------------------------------------------------------------------------- model cards


def read_card_metrics(name_or_path: str | os.PathLike[str]) -> dict[str, float]:
    """The metrics recorded in a checkpoint's model card (its ``model-index``), name -> value.

    ``name_or_path`` is resolved like :func:`from_pretrained`. The result is empty when the
    card records no metrics.

    Raises:
        CheckpointNotFoundError: the checkpoint has no ``README.md``.
        CheckpointConfigError: the card is empty, has no or a broken YAML header, or records
            a metric that is not a number.
    """
    return _card_metrics(resolve_checkpoint(name_or_path) / _CARD)


def _card_metrics(path: Path) -> dict[str, float]:
    """The checked model card at ``path``: its metrics (see :func:`read_card_metrics`)."""
    rewrite = "rewrite it with aimle_zoo.hub.write_model_card(folder, metrics=..., command=...)"
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"{path} does not exist: a checkpoint needs its model card to be published or to "
            f"report its metrics; {rewrite.replace('rewrite', 'write')}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise CheckpointConfigError(f"the model card {path} is not UTF-8 text; {rewrite}") from err
    if not text.startswith("---") or "\n---" not in text[3:]:
        raise CheckpointConfigError(
            f"the model card {path} has no complete YAML header (metadata between two '---' "
            f"lines: library, license, tags, metrics); {rewrite}"
        )
    try:
        results = getattr(ModelCard(text).data, "eval_results", None) or []
    except (ValueError, yaml.YAMLError) as err:
        raise CheckpointConfigError(
            f"the model card {path} has a YAML header that does not parse ({err}); {rewrite}"
        ) from err
    metrics = {}
    for result in results:
        try:
            metrics[result.metric_type] = float(result.metric_value)
        except (TypeError, ValueError) as err:
            raise CheckpointConfigError(
                f"the model card {path} records metric {result.metric_type!r} as "
                f"{result.metric_value!r}, not a number; {rewrite}"
            ) from err
    return metrics


def write_model_card(
    folder: str | os.PathLike[str],
    *,
    metrics: dict[str, float] | None = None,
    command: str | None = None,
    dataset: str | None = None,
    dataset_id: str | None = None,
    repo_id: str | None = None,
) -> Path:
    """(Re)write the ``README.md`` card of a checkpoint folder, e.g. once it is evaluated.

    The folder is loaded first (strictly), and the card replaces the old one atomically. It
    names the aimle-zoo version that wrote the checkpoint (its ``config.json``). Arguments as
    in ``ZooModel.save_pretrained`` (``dataset_id``: the Hub dataset id when ``dataset`` is
    a description); returns the card's path.
    """
    folder = Path(folder)
    model = ZooModel.from_pretrained(folder)
    card = model.generate_model_card(
        repo_id=repo_id or default_repo_id(folder, model.model_name),
        metrics=metrics,
        command=command,
        dataset=dataset,
        dataset_id=dataset_id,
        written_by=str(read_checkpoint_config(folder)["aimle_zoo_version"]),
    )
    path = folder / _CARD
    with atomic_file(path) as handle:
        handle.write(str(card).encode("utf-8"))
    return path


# ----------------------------------------------------------------------------- pushing


def upload_plan(folder: str | os.PathLike[str]) -> list[UploadFile]:
    """The files :func:`push_to_hub` uploads from a checkpoint folder, with their sizes.

    The folder is checked first: it must load strictly and have its model card. Only
    :data:`CHECKPOINT_FILES` are uploaded, and :data:`RECIPE_FILE` when the folder has one;
    other files (e.g. a trainer state) stay local.

    Raises:
        CheckpointError: the folder is not a complete, loadable checkpoint, or its model card
            is missing or broken.
    """
    folder = Path(folder)
    ZooModel.from_pretrained(folder)
    _card_metrics(folder / _CARD)
    names = [*CHECKPOINT_FILES, *([RECIPE_FILE] if (folder / RECIPE_FILE).is_file() else [])]
    return [UploadFile(name, (folder / name).stat().st_size) for name in names]


def push_to_hub(
    model_or_folder: ZooModel | str | os.PathLike[str],
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
) -> list[UploadFile] | CommitInfo:
    """Upload a checkpoint with ``HfApi.create_repo`` and ``HfApi.upload_folder``.

    A model is first saved to a temporary folder with a plain card; to publish metrics, the
    data and the command, save it with ``save_pretrained(folder, metrics=..., command=...,
    dataset=...)`` and push the folder.

    Args:
        model_or_folder: a zoo model, or a checkpoint folder (checked by :func:`upload_plan`).
        repo_id: ``owner/name``, e.g. ``"aimle-zoo/dvae-mnist"``.
        revision: the branch to commit to (created if missing); default ``main``.
        private: create the repository as private (an existing one keeps its visibility).
        token: Hub token; default ``HF_TOKEN`` or the one saved by ``hf auth login``.
        commit_message: default ``"Upload <architecture> checkpoint (aimle-zoo <version>)"``.
        dry_run: only return the files and sizes that would be uploaded; no server is
            contacted.

    Returns:
        The :func:`upload_plan` with ``dry_run=True``, else the commit's ``CommitInfo``.

    Raises:
        ValueError: ``repo_id`` is not ``owner/name``.
        CheckpointError: the folder is not a complete, loadable checkpoint.
        HubPushError: offline mode is on, or the Hub could not be reached, refused the
            token or rejected the commit (the original error is chained).
    """
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"invalid Hub repository id {repo_id!r}: {err}") from err
    if "/" not in repo_id:
        raise ValueError(
            f"push_to_hub needs a full repository id owner/name, got {repo_id!r}; e.g. "
            f"'{HUB_ORGANIZATION}/{repo_id}'"
        )
    if isinstance(model_or_folder, ZooModel):
        with tempfile.TemporaryDirectory(prefix="aimle-zoo-push-") as staging:
            folder = Path(staging) / repo_id.split("/")[1]
            model_or_folder.save_pretrained(folder, repo_id=repo_id)
            return _push_folder(folder, repo_id, revision, private, token, commit_message, dry_run)
    return _push_folder(
        Path(model_or_folder), repo_id, revision, private, token, commit_message, dry_run
    )


def _push_folder(
    folder: Path,
    repo_id: str,
    revision: str | None,
    private: bool,
    token: str | None,
    commit_message: str | None,
    dry_run: bool,
) -> list[UploadFile] | CommitInfo:
    upload_plan(folder)  # checks the folder itself, so that errors name it
    with tempfile.TemporaryDirectory(prefix="aimle-zoo-push-") as staging:
        uploaded = _card_for(folder, repo_id, Path(staging))
        files = upload_plan(uploaded)
        if dry_run:
            return files
        return _upload(folder, uploaded, files, repo_id, revision, private, token, commit_message)


def _card_for(folder: Path, repo_id: str, staging: Path) -> Path:
    """``folder`` itself if its card names ``repo_id``, else a copy in ``staging`` whose card
    names it (title, usage and model index), so that the published card loads its own repo.
    A card that names no Hub id (``owner/name``) is left as it is."""
    card = folder / _CARD
    loaded = ModelCard.load(card)  # checked by upload_plan
    shown = loaded.data.model_name  # set with metrics; else the card's title names it
    if not isinstance(shown, str):
        title = re.search(r"^# (\S+/\S+)\s*$", loaded.text, re.MULTILINE)
        shown = title.group(1) if title else None
    if shown is None or "/" not in shown or shown == repo_id:
        return folder
    copy = staging / folder.name
    copy.mkdir()
    for name in (*CHECKPOINT_FILES, RECIPE_FILE):
        if (folder / name).is_file() and name != _CARD:
            shutil.copy2(folder / name, copy / name)
    (copy / _CARD).write_text(card.read_text(encoding="utf-8").replace(shown, repo_id), "utf-8")
    return copy


def _upload(
    folder: Path,
    uploaded: Path,
    files: list[UploadFile],
    repo_id: str,
    revision: str | None,
    private: bool,
    token: str | None,
    commit_message: str | None,
) -> CommitInfo:
    """Create the repository (and branch) and upload ``files`` from ``uploaded`` (``folder``'s
    files, its card perhaps rewritten for ``repo_id``); messages name ``folder``."""
    from . import __version__

    destination = f"{repo_id}@{revision}" if revision else repo_id
    if constants.HF_HUB_OFFLINE:
        raise HubPushError(
            f"cannot push {folder} to {destination}: HF_HUB_OFFLINE=1 forbids network access; "
            "unset it, or pass dry_run=True to list the files only"
        )
    architecture = read_checkpoint_config(uploaded)["architecture"]
    message = commit_message or f"Upload {architecture} checkpoint (aimle-zoo {__version__})"
    api = HfApi(token=token, library_name="aimle_zoo", library_version=__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None and revision != constants.DEFAULT_REVISION:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=uploaded,
            revision=revision,
            commit_message=message,
            allow_patterns=[file.path for file in files],
        )
    except Exception as err:  # the HTTP client's connection errors share no base with OSError
        raise HubPushError(
            f"pushing {folder} to {destination} at {api.endpoint} failed: "
            f"{type(err).__name__}: {err}. Check the network and HF_ENDPOINT, and the token "
            "(hf auth login, HF_TOKEN or token=...); dry_run=True lists the files without a "
            "server"
        ) from err


def format_size(size: int) -> str:
    """A byte count for people: ``"512 B"``, ``"1.5 kB"``, ``"12.3 MB"`` (powers of 1000); a
    value that rounds to 1000.0 of a unit is shown in the next one (``"1.0 MB"``)."""
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if round(value, 1) < 1000 or unit == "TB":
            break
    return f"{value:.1f} {unit}"
