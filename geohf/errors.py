"""User errors and the checks at geohf's front doors (torch-free: the ``geohf`` command imports this).

:class:`UserError` is what code raises for a problem the user can fix (a missing path, a flag
combination, an optional extra that is not installed, a model or dataset that cannot be found);
``geohf.cli.main`` prints it as one ``error: ...`` line and exits 2. :func:`check_source` is the one
check of a ``--model`` / ``--dataset`` value: a local-looking name that does not exist fails at
once, and a Hub id is probed with one short request instead of huggingface_hub's retries (about
30 s when the Hub is unreachable).
"""

from __future__ import annotations

import os
from pathlib import Path


class UserError(ValueError):
    """A problem the user can fix; the message names the thing and the fix (one line).

    A ValueError, so ``raise ValueError(...)`` of a user-facing check can become ``raise UserError(...)``
    without breaking callers that catch ValueError.
    """


# top-level module -> the geohf extra that installs it
EXTRAS = {
    "gradio": "app",
    "gradio_client": "app",
    "onnx": "export",
    "onnxruntime": "export",
    "onnxscript": "export",
    "tensorboard": "tracking",
    "trackio": "tracking",
    "optuna": "tracking",
    "pillow_heif": "heif",
    "reverse_geocoder": "benchmarks",
    "usearch": "retrieval",
    "faiss": "retrieval",
    "peft": "peft",
}

# suffixes that mark a name as a file, not a Hub repo id
FILE_SUFFIXES = {
    *(".json", ".yaml", ".yml", ".txt", ".csv", ".tsv", ".jsonl", ".parquet", ".arrow", ".safetensors", ".bin"),
    *(".pt", ".pth", ".ckpt", ".onnx", ".zip", ".tar", ".gz", ".tgz", ".jpg", ".jpeg", ".png", ".heic", ".webp"),
}

HUB_PROBE_TIMEOUT = float(os.environ.get("GEOHF_HUB_TIMEOUT", "3"))


def missing_extra(err: BaseException) -> tuple[str, str] | None:
    """``(module, extra)`` when ``err`` is an ImportError of a module an optional extra installs."""
    if not isinstance(err, ImportError):
        return None
    module = (err.name or "").split(".")[0]
    return (module, EXTRAS[module]) if module in EXTRAS else None


def extra_message(command: str, module: str, extra: str) -> str:
    return f'{command} needs the {extra!r} extra ({module} is not installed): pip install "geohf[{extra}]"'


def looks_local(name: str) -> bool:
    """Whether ``name`` is meant as a path rather than a Hub ``org/name`` id."""
    if name.startswith((".", "/", "~")) or (os.sep != "/" and os.sep in name) or (os.altsep and os.altsep in name):
        return True
    if name.count("/") > 1 or Path(name).suffix.lower() in FILE_SUFFIXES:
        return True
    head = name.split("/")[0]
    return "/" in name and Path(head).is_dir()  # 'runs/modle' where runs/ exists: a typo of a folder


def check_source(name: str, kind: str = "model", revision: str | None = None, flag: str | None = None) -> str:
    """``name`` (``~`` expanded) if it is a folder or a reachable Hub repo; else a :class:`UserError`.

    ``kind`` is ``"model"`` or ``"dataset"``. A Hub id is probed once (``GEOHF_HUB_TIMEOUT`` s, default
    3): not found is an error; an unreachable Hub is an error unless the repo is in the local Hub cache,
    and then this process continues offline (``HF_HUB_OFFLINE``) instead of retrying every file.
    """
    flag = flag or f"--{kind}"
    path = Path(name).expanduser()
    if path.exists():
        if kind == "model" and path.is_dir() and not (path / "config.json").is_file():
            raise UserError(f"{flag} {name}: the folder has no config.json, so it is not a model folder")
        if kind == "model" and not path.is_dir():
            raise UserError(f"{flag} {name}: is a file; pass the model folder (with config.json)")
        return str(path)
    if looks_local(name):
        raise UserError(f"{flag} {name}: no such {kind} folder")
    _probe_hub(name, kind, revision, flag)
    return name


def _probe_hub(name: str, kind: str, revision: str | None, flag: str) -> None:
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise UserError(f"{flag} {name}: neither a {kind} folder nor a valid Hub repo id (org/name)") from None
    if constants.HF_HUB_OFFLINE:
        if not _cached(name, kind, revision):
            raise UserError(f"{flag} {name}: no such {kind} folder, and not in the Hub cache (HF_HUB_OFFLINE is set)")
        return
    try:  # with a revision: what mirrors (olah) serve, and what datasets asks for
        HfApi().repo_info(name, repo_type=kind, revision=revision or "main", timeout=HUB_PROBE_TIMEOUT)
    except GatedRepoError:
        return  # the loader explains access
    except RevisionNotFoundError:
        if revision is None:
            return  # no 'main' branch: the loader finds the default one
        raise UserError(f"{flag} {name}: the Hub repo has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise UserError(
            f"{flag} {name}: no such {kind} folder here, and no such Hub repo (or it is private: hf auth login)"
        ) from None
    except HfHubHTTPError:
        return  # another answer from the server: let the loader deal with it
    except Exception as err:  # the Hub cannot be reached (DNS, refused, time-out)
        if not _cached(name, kind, revision):
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(
                f"{flag} {name}: no such {kind} folder, and the Hub cannot be reached ({reason}) nor is it cached; "
                "check the name or the connection"
            ) from None
        go_offline()


def _cached(name: str, kind: str, revision: str | None) -> bool:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(name, repo_type=kind, revision=revision, local_files_only=True)
    except Exception:
        return False
    return True


def go_offline() -> None:
    """Use only the local Hub cache from now on in this process (no retries against an unreachable Hub)."""
    import sys

    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """``"1 copy"``, ``"2 copies"``: a count with its noun in the right number."""
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


def one_line(err: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(err).split()) or type(err).__name__
