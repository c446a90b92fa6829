"""Faults in a model folder: damaged weights, config or cell file; pickled weights. Each through
``geohf predict``, ``geohf evaluate`` and ``GeoPredictor``: one line naming the file, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest

from geohf.errors import UserError
from geohf.inference.predictor import GeoPredictor


def _truncate_half(folder: Path) -> str:
    path = folder / "model.safetensors"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    return "model.safetensors"


def _truncate_header(folder: Path) -> str:
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:5])
    return "model.safetensors"


def _break_config(folder: Path) -> str:
    with open(folder / "config.json", "a", encoding="utf-8") as f:
        f.write('{"oops": ')
    return "config.json"


def _drop_cells(folder: Path) -> str:
    (cells,) = (folder / "cells").glob("*.parquet")
    cells.unlink()
    return f"cells/{cells.name}"


def _truncate_cells(folder: Path) -> str:
    (cells,) = (folder / "cells").glob("*.parquet")
    cells.write_bytes(cells.read_bytes()[:100])
    return f"cells/{cells.name}"


# case → (damage, was it a traceback or silently accepted before this fix?)
DAMAGES = {
    "`model.safetensors` truncated to half": (_truncate_half, True),
    "`model.safetensors` cut inside its header (5 bytes)": (_truncate_header, True),
    "`config.json` not valid JSON": (_break_config, False),
    "`cells/<partition>.parquet` missing": (_drop_cells, True),
    "`cells/<partition>.parquet` truncated": (_truncate_cells, True),
}


@pytest.fixture
def damaged(tiny_model_dir, tmp_path):
    def make(name: str) -> tuple[Path, str]:
        folder = tmp_path / "model"
        shutil.copytree(tiny_model_dir, folder)
        return folder, DAMAGES[name][0](folder)

    return make


@pytest.mark.parametrize("case", list(DAMAGES))
def test_damaged_model_folder_is_refused_naming_the_file(case, damaged, tiny_dataset, tmp_path, cli, record):
    folder, name = damaged(case)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32), "green").save(image)
    runs = {
        "geohf predict": cli("predict", "--model", folder, image, "--quiet"),
        "geohf evaluate": cli("evaluate", "--model", folder, "--dataset", tiny_dataset, "--output", tmp_path / "ev"),
    }
    for entry, run in runs.items():
        one_line = run.code == 2 and len(run.errors) == 1 and "Traceback" not in run.err
        ok = one_line and str(folder / name) in run.errors[0]
        shown = (run.errors[0] if run.errors else run.err[-160:]).replace(str(folder), "<model>")
        shown = shown.replace("error: --model <model>: cannot load the model (", "error: … (")
        record("model folder", case, entry, "refused: one line naming the file", shown, ok,
               fixed=DAMAGES[case][1])  # fmt: skip
        assert ok, run.err
    assert not (tmp_path / "ev" / "metrics.json").exists()
    with pytest.raises(UserError) as err:
        GeoPredictor(str(folder), bf16=False)
    ok = str(folder / name) in str(err.value) and "\n" not in str(err.value)
    record("model folder", case, "GeoPredictor(folder)", "UserError naming the file",
           str(err.value).replace(str(folder), "<model>"), ok,
           fixed=DAMAGES[case][1])  # fmt: skip
    assert ok


def _pickled_copy(tiny_model_dir: Path, folder: Path, extra: dict | None = None) -> Path:
    import torch
    from safetensors.torch import load_file

    shutil.copytree(tiny_model_dir, folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save({**state, **(extra or {})}, folder / "pytorch_model.bin")
    return folder


class _Payload:
    """What a malicious checkpoint carries: unpickling it would run a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_weights_load_only_as_tensors_with_a_warning(tiny_model_dir, tmp_path, cli, record):
    """Decision: a folder with only ``pytorch_model.bin`` loads through ``torch.load(weights_only=True)``
    (tensors only) with a warning naming the file; a pickle carrying code is refused, and nothing runs."""
    from PIL import Image

    image = Image.new("RGB", (32, 32), "green")
    image.save(tmp_path / "x.png")
    plain = _pickled_copy(tiny_model_dir, tmp_path / "bin")
    with pytest.warns(UserWarning, match=r"pytorch_model\.bin: pickled weights .*weights_only=True"):
        predictor = GeoPredictor(str(plain), bf16=False)
    reference = GeoPredictor(str(tiny_model_dir), bf16=False)
    same = predictor.predict_images([image]).records() == reference.predict_images([image]).records()
    record("model folder", "only a pickled `pytorch_model.bin` (tensors)", "GeoPredictor(folder)",
           "loaded with weights_only=True and a warning naming it", f"warned; predictions identical to the "
           f"safetensors folder: {same}", same, fixed=True)  # fmt: skip
    assert same

    marker = tmp_path / "code-ran"
    evil = _pickled_copy(tiny_model_dir, tmp_path / "evil", {"payload": _Payload(marker)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = cli("predict", "--model", evil, tmp_path / "x.png", "--quiet")
        with pytest.raises(UserError, match="refused") as err:
            GeoPredictor(str(evil), bf16=False)
    ok = (
        run.code == 2
        and len(run.errors) == 1
        and str(evil / "pytorch_model.bin") in run.errors[0]
        and "posix.system" in str(err.value)
        and not marker.exists()
    )
    record("model folder", "a pickled `pytorch_model.bin` whose pickle runs `os.system`", "geohf predict",
           "refused naming the file; the code never runs", (run.errors or [run.err])[0].replace(str(evil), "<model>")
           .replace("error: --model <model>: cannot load the model (", "error: … ("), ok, fixed=True)  # fmt: skip
    assert ok


def test_shipped_folder_still_loads(tiny_model_dir):
    """The checks accept what save_pretrained writes (and no warning for safetensors weights)."""
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert any(h.get("partition") for h in config["heads"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        GeoPredictor(str(tiny_model_dir), bf16=False)
