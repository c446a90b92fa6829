"""Safety: no unsafe deserialisation in the code base, safetensors only, secrets never written."""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE = [ROOT / "geohf", ROOT / "scripts", ROOT / "benchmarks"]


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(path: Path) -> list[str]:
    """Calls that can run code from a file a user hands us."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{node.lineno}: {name}"
        if name in {"pickle.load", "pickle.loads", "cPickle.load", "dill.load", "joblib.load", "pd.read_pickle",
                    "pandas.read_pickle", "marshal.load", "marshal.loads", "shelve.open", "eval", "exec"}:  # fmt: skip
            found.append(where)
        elif name.endswith("torch.load") or name == "load" and isinstance(node.func, ast.Name):
            if not _is_true(_keyword(node, "weights_only")):
                found.append(where + " without weights_only=True")
        elif name in {"np.load", "numpy.load"} and _is_true(_keyword(node, "allow_pickle")):
            found.append(where + " with allow_pickle=True")
        elif _is_true(_keyword(node, "trust_remote_code")):
            found.append(where + " with trust_remote_code=True")
        elif name.endswith("yaml.load") and "SafeLoader" not in ast.unparse(node):
            found.append(where + " (use yaml.safe_load)")
    return found


def test_no_unsafe_loading_in_the_code_base(record):
    files = [p for root in CODE for p in root.rglob("*.py")]
    found = [hit for p in files for hit in unsafe_calls(p)]
    ok = len(files) > 50 and not found
    record(
        "safety",
        f"scan of {len(files)} source files for pickle / torch.load / eval / trust_remote_code",
        "code base",
        "none",
        "; ".join(found) or "none found",
        ok,
    )
    assert ok, found


def test_the_scanner_catches_what_it_should(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text(
        "import pickle, torch\npickle.load(open('x','rb'))\ntorch.load('m.pt')\n"
        "torch.load('m.pt', weights_only=True)\nfrom_pretrained('x', trust_remote_code=True)\n"
    )
    assert [h.split(": ", 1)[1] for h in unsafe_calls(bad)] == [
        "pickle.load",
        "torch.load without weights_only=True",
        "from_pretrained with trust_remote_code=True",
    ]


def test_models_are_saved_as_safetensors(tiny_model_dir, record):
    weights = sorted(
        p.name
        for p in Path(tiny_model_dir).iterdir()
        if p.suffix in {".safetensors", ".bin", ".pt", ".pth", ".pkl", ".ckpt"}
    )
    ok = weights == ["model.safetensors"]
    record(
        "safety",
        "weights format of a trained model folder",
        "geohf train",
        "safetensors only",
        ", ".join(weights),
        ok,
        fixed=True,
    )
    assert ok


def _dead_endpoint() -> str:
    with socket.socket() as s:  # a port nothing listens on: every Hub call fails fast
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_secrets_never_reach_files_logs_or_errors(tiny_dataset, tmp_path, record):
    secrets = {"HF_TOKEN": "hf_FAKEenvTOKEN0123456789abcdefXYZ", "MAPILLARY_ACCESS_TOKEN": "MLY|FAKE|mapillary9876",
               "GOOGLE_MAPS_API_KEY": "AIzaFAKEgoogleKEY0123456789"}  # fmt: skip
    hub_token = "hf_FAKEargTOKEN9876543210zyxwvuXYZ"
    env = {
        **os.environ,
        **secrets,
        "HF_ENDPOINT": _dead_endpoint(),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    out = tmp_path / "model"
    train = subprocess.run(
        [sys.executable, "-m", "geohf.cli", "train", "--dataset", str(tiny_dataset), "--output_dir", str(out),
         "--image_size", "32", "--crop_pct", "1.0", "--max_steps", "2", "--per_device_train_batch_size", "8",
         "--use_cpu", "--report_to", "none", "--save_strategy", "no", "--push_to_hub", "--hub_model_id", "org/m",
         "--hub_token", hub_token, "--logging_steps", "1"],
        env=env, capture_output=True, text=True)  # fmt: skip
    push = subprocess.run([sys.executable, "-m", "geohf.cli", "dataset", "push", str(tiny_dataset), "--repo-id",
                           "org/d"], env=env, capture_output=True, text=True)  # fmt: skip
    texts = {"train stdout/stderr": train.stdout + train.stderr, "push stdout/stderr": push.stdout + push.stderr}
    for path in out.rglob("*"):
        if path.is_file():
            texts[str(path.relative_to(tmp_path))] = path.read_bytes().decode("latin-1")
    leaks = [(where, name) for where, text in texts.items()
             for name, value in {**secrets, "--hub_token": hub_token}.items() if value in text]  # fmt: skip
    trained = (out / "model.safetensors").exists()
    failed_loudly = train.returncode != 0 and push.returncode != 0  # the Hub is unreachable: exit status says so
    ok = not leaks and trained and failed_loudly
    record(
        "safety",
        "fake HF/Mapillary/Google secrets in env and flags; train --push_to_hub and dataset push to an unreachable Hub",
        "geohf train / dataset push",
        "no secret in any file, log or error",
        f"{len(texts)} outputs scanned, leaks: {leaks or 'none'}; exits {train.returncode}/{push.returncode}",
        ok,
    )
    assert not leaks and trained, (leaks, train.stderr[-2000:])
    assert failed_loudly, (train.stderr[-1000:], push.stderr[-1000:])
