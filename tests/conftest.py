"""Shared fixtures: real boundaries, a tiny Blue Marble dataset and a model trained for 2 steps."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# subprocesses (``python -m geohf.cli`` from another folder, scripts) import this checkout's geohf
_ROOT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class _CloneRootIsAFolder:
    """Collect the clone's root as a folder, not a package.

    The root holds an ``__init__.py`` (the guard for ``import geohf`` run beside a clone named geohf), so pytest
    would collect it as a package named after the clone's folder: it imports it with the folder above the clone
    put first on ``sys.path``. In a clone named ``geohf`` that folder makes the guard shadow the package for
    every process spawned later (the image check's workers died on its ImportError).
    """

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        return pytest.Dir.from_parent(parent, path=path) if str(path.resolve()) == _ROOT else None


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_CloneRootIsAFolder(), "geohf-clone-root-is-a-folder")


@pytest.fixture(scope="session")
def admin1_path() -> str:
    """The boundary file the package uses by default: ``$GEOHF_BOUNDARIES`` or the shipped admin-1 file."""
    from geohf.geo.boundaries import resolve_boundaries

    path = resolve_boundaries(None)
    assert path.is_file(), f"boundary file {path} is missing"  # never a skip: the package ships it
    return str(path)


@pytest.fixture(scope="session")
def labeller(admin1_path):
    from geohf.geo.labelling import PointLabeller

    return PointLabeller(admin1_path)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, admin1_path) -> Path:
    """200 Blue Marble tiles (160/20/20) with a small quadtree partition."""
    from geohf.data.bluemarble import TileSpec, build_bluemarble

    out = tmp_path_factory.mktemp("data") / "bluemarble"
    build_bluemarble(
        out,
        {"train": 160, "validation": 20, "test": 20},
        TileSpec(tile_px=32, block_px=64, seed=0),
        cells=["quadtree:max_samples=20,min_samples=4"],
        boundaries=admin1_path,
    )
    return out


def tiny_training_args(out, **kw):
    """``GeoTrainingArguments`` for a few CPU steps on the tiny dataset (``kw`` overrides)."""
    from geohf.training.trainer import GeoTrainingArguments

    base = dict(
        output_dir=str(out),
        max_steps=2,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=1e-3,
        bf16=True,
        use_cpu=True,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        logging_steps=1,
    )
    return GeoTrainingArguments(**{**base, **kw})


@pytest.fixture(scope="session")
def training_args():
    """``training_args(out, **kw)``: :func:`tiny_training_args` for tests."""
    return tiny_training_args


def tiny_train_argv(dataset, out, **kw) -> list[str]:
    """``geohf train`` flags for a few CPU steps on ``dataset``, the command-line twin of
    :func:`tiny_training_args` (``kw``: more flags or other values, ``None`` leaves a flag out)."""
    flags = {
        "dataset": dataset,
        "output_dir": out,
        "image_size": 32,
        "max_steps": 2,
        "per_device_train_batch_size": 8,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": "true",
    } | kw
    return [arg for name, value in flags.items() if value is not None for arg in (f"--{name}", str(value))] + [
        "--use_cpu"
    ]


@pytest.fixture(scope="session")
def train_argv():
    """``train_argv(dataset, out, **kw)``: :func:`tiny_train_argv` for tests."""
    return tiny_train_argv


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_dataset) -> Path:
    """A model folder trained for 2 steps on the tiny dataset (real Trainer path)."""

    from geohf.data.transforms import AugmentConfig
    from geohf.training.train import DataArguments, ModelArguments, run_training

    out = tmp_path_factory.mktemp("model") / "model"
    args = tiny_training_args(out)
    run_training(
        ModelArguments(image_size=32, crop_pct=1.0), DataArguments(dataset=str(tiny_dataset)), AugmentConfig(), args
    )
    return out


class HubServer:
    """``olah`` serving plain git repos over the Hub API on 127.0.0.1 (offline)."""

    def __init__(self, root: Path, port: int):
        self.root, self.port = root, port
        self.endpoint = f"http://127.0.0.1:{port}"

    def publish(self, folder: Path, repo_id: str, repo_type: str = "dataset") -> Path:
        """Commit ``folder`` as the ``main`` branch of ``repo_id`` (what a push would have uploaded)."""
        import shutil
        import subprocess

        target = self.root / "mirrors" / f"{repo_type}s" / repo_id
        shutil.copytree(folder, target)
        git = ["git", "-c", "user.email=ci@geohf", "-c", "user.name=geohf-ci", "-C", str(target)]
        subprocess.run(["git", "init", "-q", "-b", "main", str(target)], check=True)
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "upload"], check=True)
        return target

    def env(self, home: Path) -> dict:
        """Environment for a client process talking to this server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(
            {
                "HF_ENDPOINT": self.endpoint,
                "HF_HOME": str(home),
                "HF_HUB_DISABLE_XET": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1",
            }
        )
        return env


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """A local Hub (olah) for every load-from-Hub path."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("hub")
    (root / "mirrors").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = root / "olah.toml"
    config.write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = "{root / "cache"}"\n'
        f'mirrors-path = ["{root / "mirrors"}"]\n[accessibility]\noffline = true\n'
    )
    olah = Path(sys.executable).with_name("olah-cli")
    proc = subprocess.Popen(
        [str(olah), "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root
    )
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models/none/none", timeout=2)
        except urllib.error.HTTPError:
            break  # the server answers
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("olah did not start")
            time.sleep(0.5)
        else:
            break
    yield HubServer(root, port)
    proc.terminate()
    proc.wait(timeout=10)


@dataclass
class CliResult:
    """What one ``geohf`` command did: exit code, stdout and stderr."""

    code: int
    out: str
    err: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]


@pytest.fixture
def cli(capsys):
    """``cli("predict", "--model", path, ...)``: run ``geohf.cli.main`` in-process, return a :class:`CliResult`."""
    from geohf.cli import main

    def run(*argv) -> CliResult:
        capsys.readouterr()  # drop what came before
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit:  # --help, --version
            code = exit.code
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


class LazyItems:
    """A sequence of ``n`` prediction items made on demand (nothing held), cycling over ``paths``."""

    def __init__(self, paths, n: int):
        self.paths, self.n = list(paths), n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        from geohf.inference.inputs import ImageRef, PredictItem

        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not 0 <= i < self.n:
            raise IndexError(i)
        return PredictItem([ImageRef(str(self.paths[i % len(self.paths)]))])


@pytest.fixture(scope="session")
def lazy_items():
    """``lazy_items(paths, n)``: many prediction inputs without holding them (streaming and memory tests)."""
    return LazyItems


@dataclass
class AppProcess:
    """``geohf app`` running in its own process on 127.0.0.1."""

    url: str
    pid: int
    results: Path


@pytest.fixture(scope="session")
def geohf_app(tiny_model_dir, tiny_dataset, tmp_path_factory):
    """``geohf app --model <tiny> --dataset <tiny>`` as a user starts it, on a free port of 127.0.0.1."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    pytest.importorskip("gradio", reason="needs the app extra (gradio)")
    root = tmp_path_factory.mktemp("geohf_app")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = root / "human.jsonl"
    command = [sys.executable, "-m", "geohf.cli", "app", "--model", str(tiny_model_dir), "--dataset",
               str(tiny_dataset), "--port", str(port), "--results", str(results)]  # fmt: skip
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    log = open(root / "app.log", "wb")  # noqa: SIM115 - closed after the process
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                log.close()
                pytest.fail(f"geohf app did not start:\n{(root / 'app.log').read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
    yield AppProcess(url, proc.pid, results)
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def threads_kept():
    """``check(threads)``: the caller still has ``threads`` torch threads and a thread started now sees as many
    (the count new threads copy), after something ran batches in threads of its own."""
    import threading

    import torch

    def check(threads: int) -> None:
        seen = []
        worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        worker.start()
        worker.join()
        assert torch.get_num_threads() == threads and seen == [threads]

    return check


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test run: 2 CPUs, no dashboard (actors in tests take fractional CPUs, else
    they starve the read and write tasks on a 2-core machine)."""
    from geohf.engines import connect_ray

    ray = connect_ray(None, num_cpus=2)
    yield ray
    ray.shutdown()
