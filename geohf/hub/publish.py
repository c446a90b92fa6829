"""Publishing dataset and model folders to the Hugging Face Hub (one commit each)."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi

# never uploaded: half-written files, local paths of skipped inputs stay uploaded only as relative paths
IGNORE_PATTERNS = ["*.partial-*", "*.tmp", "*.tmp/*", ".git/*", "checkpoint-*/*", "runs/*", "training_args.bin"]


def check_folder(folder: str | os.PathLike, kind: str) -> Path:
    """The folder, if it is a complete dataset or model folder; a clear error otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    if kind == "dataset":
        if not (folder / "README.md").is_file() or not any((folder / "data").glob("*.parquet")):
            raise ValueError(
                f"{folder} is not a finished dataset folder (README.md and data/*.parquet expected); "
                "build it with `geohf dataset build`"
            )
    elif not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise ValueError(f"{folder} is not a saved model folder (config.json and model.safetensors expected)")
    return folder


def files_to_upload(folder: str | os.PathLike) -> list[str]:
    """Relative paths ``upload_folder`` would commit (after the ignore patterns)."""
    from fnmatch import fnmatch

    folder = Path(folder)
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not any(fnmatch(rel, pat) for pat in IGNORE_PATTERNS):
            out.append(rel)
    return out


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    kind: str = "dataset",
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    api: HfApi | None = None,
):
    """Create the repo if needed and upload the folder in one commit; returns the commit info.

    The token comes from ``token``, ``HF_TOKEN`` or the saved login, and is never written anywhere.
    """
    folder = check_folder(folder, kind)
    api = api or HfApi(token=token)
    api.create_repo(repo_id, repo_type=kind, private=private, exist_ok=True)
    return api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type=kind,
        revision=revision,
        commit_message=commit_message or f"Upload {kind} with geohf",
        ignore_patterns=IGNORE_PATTERNS,
    )
