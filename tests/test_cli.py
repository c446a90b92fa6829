import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import load_dataset

from geohf.cli import main
from geohf.errors import UserError, looks_local
from geohf.inference.writers import PREDICTION_COLUMNS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(tiny_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    ds = load_dataset(str(tiny_dataset), split="test")
    good = []
    for i in range(3):
        path = folder / f"tile{i}.png"
        ds[i]["image"].save(path)
        good.append(path)
    jpg = folder / "tile.jpg"
    ds[3]["image"].save(jpg, quality=90)
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    text = folder / "notes.jpg"
    text.write_text("this is not an image")
    return {"good": good + [jpg], "truncated": truncated, "text": text, "missing": folder / "missing.png"}


def test_predict_jsonl(tiny_model_dir, images, tmp_path):
    out = tmp_path / "pred.jsonl"
    code = main(
        ["predict", "--model", str(tiny_model_dir), *map(str, images["good"]), "--top-k", "3", "--output", str(out)]
    )
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["file"] for r in records] == [str(p) for p in images["good"]]
    for r in records:
        assert set(r) == {"file", *PREDICTION_COLUMNS, "top_k"}
        assert r["radius_km"] >= 0
        assert len(r["top_k"]) == 3 and set(r["top_k"][0]) == {"label", "score", "latitude", "longitude"}
        assert -90 <= r["pred_latitude"] <= 90 and -180 <= r["pred_longitude"] <= 180
        assert r["score"] == r["top_k"][0]["score"] and r["pred_country_code"]


def test_predict_bad_inputs_are_reported_and_the_rest_predicted(tiny_model_dir, images, tmp_path, cli):
    out = tmp_path / "pred.jsonl"
    bad = [images["missing"], images["text"], images["truncated"]]
    run = cli("predict", "--model", tiny_model_dir, images["good"][0], *bad, images["good"][1], "--output", out)
    assert run.code == 1
    errors = run.errors
    assert len(errors) == 3
    assert str(images["missing"]) in errors[0] and "no such file" in errors[0]
    assert str(images["text"]) in errors[1] and "not an image" in errors[1]
    assert str(images["truncated"]) in errors[2] and "truncated" in errors[2]
    assert "3 of 5 images could not be read" in run.err
    assert len(out.read_text().splitlines()) == 2


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, admin1_path, capsys):
    from geohf.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        output=str(tmp_path / "demo"),
        minutes=1.0,
        train_tiles=160,
        validation_tiles=30,
        test_tiles=30,
        tile_px=32,
        image_size=32,
        batch_size=16,
        max_cell_samples=20,
        min_cell_samples=4,
        boundaries=admin1_path,
        reserve_seconds=30,
    )
    metrics = run_demo(cfg)
    out = capsys.readouterr().out
    assert "geometric median" in out and "random cell by frequency" in out and "median km" in out
    root = tmp_path / "demo"
    assert (root / "dataset" / "README.md").is_file() and (root / "model" / "model.safetensors").is_file()
    assert not list((root / "model").glob("checkpoint-*"))
    saved = json.loads((root / "metrics.json").read_text())
    assert saved["sizes"] == {"train": 160, "validation": 30, "test": 30} == metrics["sizes"]
    assert set(saved["results"]) == {"model", "geometric median", "random cell by frequency"}
    assert saved["train"]["steps"] >= 1
    preds = [json.loads(line) for line in (root / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and all("top_k" in p for p in preds)
    # the model folder works with a plain transformers pipeline once geohf has registered
    from transformers import pipeline

    import geohf

    geohf.register()

    clf = pipeline("image-classification", model=str(root / "model"))
    assert clf(str(next((root / "samples").iterdir())), top_k=2)[0]["label"]


# --- the front doors: versions, import cost, one-line user errors -------------------------------------------


def test_version(cli):
    import geohf

    run = cli("--version")
    assert run.code == 0 and run.out.strip() == f"geohf {geohf.__version__}" == "geohf 0.1.0"


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
    )


def test_the_command_and_the_geography_import_no_torch():
    heavy = "{'torch', 'transformers', 'datasets', 'timm', 'pandas', 'geopandas', 'numpy', 'huggingface_hub'}"
    proc = _python(
        f"import sys, geohf.cli; geohf.cli.build_parser(); loaded = {heavy} & set(sys.modules); "
        "assert not loaded, loaded; import geohf.geo; assert 'torch' not in sys.modules, 'geo'"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_registration_with_transformers_is_explicit():
    """``import geohf`` loads no torch and hooks no import; the modules that define geohf's classes register them
    with the Auto classes when imported, and ``geohf.register()`` registers the Auto classes and the pipeline."""
    proc = _python(
        "import sys, geohf; assert 'torch' not in sys.modules\n"
        "assert not [f for f in sys.meta_path if type(f).__module__.startswith('geohf')], sys.meta_path\n"
        "from transformers import AutoConfig, pipeline\n"
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
        "from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING\n"
        "from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING, MODEL_MAPPING\n"
        "from transformers.pipelines import PIPELINE_REGISTRY\n"
        "assert 'geohf' not in CONFIG_MAPPING and 'geohf.modeling' not in sys.modules\n"
        "model_class = geohf.GeoModelForImageGeolocation\n"
        "config = AutoConfig.for_model('geohf')\n"
        "assert type(config) is geohf.GeoConfig and geohf.GeoConfig in IMAGE_PROCESSOR_MAPPING\n"
        "assert MODEL_MAPPING[geohf.GeoConfig] is geohf.GeoModel\n"
        "assert MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING[geohf.GeoConfig] is model_class\n"
        "assert 'image-geolocation' not in PIPELINE_REGISTRY.get_supported_tasks()\n"
        "geohf.register()\n"
        "assert type(AutoConfig.for_model('geohf')).__name__ == 'GeoConfig'\n"
        "assert 'image-geolocation' in PIPELINE_REGISTRY.get_supported_tasks()\n"
        "assert geohf.GeoModel.__name__ == 'GeoModel' and 'GeoModel' in dir(geohf)\n"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_lazy_names_that_are_not_there_are_attribute_errors():
    import geohf

    assert geohf.GeoConfig.model_type == "geohf"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        geohf.nope  # noqa: B018
    assert set(geohf._LAZY) <= set(dir(geohf))


def test_console_script_fails_fast_on_a_model_that_is_nowhere(tmp_path):
    """The real entry point: a Hub id with no Hub (connection refused) is one line in well under 5 s."""
    script = Path(sys.executable).with_name("geohf")
    if not script.is_file():
        pytest.skip("no geohf console script beside the interpreter")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(PYTHONPATH=str(REPO), HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    start = time.perf_counter()
    proc = subprocess.run(
        [str(script), "predict", "--model", "typo_dir", "x.jpg"], capture_output=True, text=True, env=env, timeout=60
    )
    assert time.perf_counter() - start < 5
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: --model typo_dir:"), proc.stderr


@pytest.fixture
def fake_model(tmp_path):
    """A folder that passes the model check (config.json) without being loaded."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


USER_ERRORS = {
    "predict: missing model folder": (["predict", "--model", "./missing", "x.jpg"], "--model ./missing: no such"),
    "predict: Hub id, offline, not cached": (["predict", "--model", "typo_dir", "x.jpg"], "not in the Hub cache"),
    "predict: images and --dataset": (["predict", "--model", "m", "x.jpg", "--dataset", "d"], "not several"),
    "predict: --group-pattern and --group-csv": (
        ["predict", "--model", "m", "--group-pattern", "x", "--group-csv", "g.csv"],
        "not allowed with argument",
    ),
    "predict: unknown flag": (["predict", "--model", "m", "--bogus"], "unrecognized arguments: --bogus"),
    "evaluate: missing model folder": (
        ["evaluate", "--model", "./missing", "--dataset", "d", "--output", "o"],
        "--model ./missing: no such model folder",
    ),
    "evaluate: missing dataset folder": (
        ["evaluate", "--model", "{model}", "--dataset", "./missing", "--output", "o"],
        "--dataset ./missing: no such dataset folder",
    ),
    "evaluate: a folder that is no model": (
        ["evaluate", "--model", "{tmp}", "--dataset", "d", "--output", "o"],
        "not a model folder",
    ),
    "evaluate: missing --output": (["evaluate", "--model", "m", "--dataset", "d"], "required: -o/--output"),
    "export: missing model folder": (["export", "--model", "./missing", "out"], "--model ./missing: no such"),
    "export: two output folders": (["export", "--model", "m", "a", "--output", "b"], "give the output folder once"),
    "app: missing model folder": (["app", "--model", "./missing"], "--model ./missing: no such model folder"),
    "app: missing game dataset": (
        ["app", "--model", "{model}", "--dataset", "data/missing"],
        "--dataset data/missing: no such dataset folder",
    ),
    "train: missing dataset folder": (
        ["train", "--dataset", "./missing", "--output_dir", "{tmp}/run"],
        "--dataset ./missing: no such dataset folder",
    ),
    "train: unknown flag": (["train", "--dataset", "d", "--output_dir", "o", "--bogus", "1"], "geohf train:"),
    "dataset build: no --input": (
        ["dataset", "build", "--layout", "imagefolder", "--output", "{tmp}/ds"],
        "needs --input FOLDER",
    ),
    "dataset build: missing --input": (
        ["dataset", "build", "--layout", "imagefolder", "--input", "./missing", "--output", "{tmp}/ds"],
        "--input ./missing: no such folder",
    ),
    "dataset build: bad --cells": (
        ["dataset", "build", "--layout", "bluemarble", "--output", "{tmp}/ds", "--cells", "hexes"],
        "unknown kind 'hexes'",
    ),
    "dataset build: existing --output": (
        ["dataset", "build", "--layout", "bluemarble", "--output", "{tmp}"],
        "already exists; pass --overwrite",
    ),
    "dataset push: missing folder": (["dataset", "push", "./missing", "--repo-id", "a/b"], "no such dataset folder"),
    "dataset build: bad --shard": (
        ["dataset", "build", "--layout", "bluemarble", "--output", "{tmp}/ds", "--shard", "3/2"],
        "--shard 3/2: K must be between 1 and N",
    ),
    "dataset merge: not a shard": (["dataset", "merge", "{tmp}/merged", "{tmp}"], "not a shard of a sharded build"),
    "demo: missing boundaries": (["demo", "--boundaries", "./missing.parquet"], "--boundaries ./missing.parquet"),
    "collect plan: unknown region": (
        ["collect", "plan", "--regions", "Atlantis", "--per-region", "3", "--output", "{tmp}/p.parquet"],
        "Atlantis",
    ),
    "collect run: missing plan": (
        ["collect", "run", "./missing.parquet", "--provider", "streetview", "--output", "{tmp}/o", "--dry-run"],
        "missing.parquet",
    ),
    "no command": ([], "required: command"),
}


@pytest.mark.parametrize("argv, expected", list(USER_ERRORS.values()), ids=list(USER_ERRORS))
def test_user_errors_are_one_line_and_exit_2(argv, expected, cli, fake_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    argv = [a.format(model=fake_model, tmp=tmp_path) for a in argv]
    start = time.perf_counter()
    run = cli(*argv)
    assert run.code == 2, run.err
    assert run.err.count("\n") == 1 and run.err.startswith("error: "), run.err
    assert "Traceback" not in run.err and expected in run.err
    assert time.perf_counter() - start < 60


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("gradio", ["app", "--model", "./missing"], "geohf app needs the 'app' extra (gradio is not installed)"),
        ("onnx", ["export", "--model", "./missing", "out"], "geohf export needs the 'export' extra"),
        ("onnxscript", ["export", "out", "--model", "m"], 'pip install "geohf[export]"'),
        (
            "tensorboard",
            ["train", "--dataset", "d", "--output_dir", "o", "--report_to", "tensorboard"],
            "geohf train needs the 'tracking' extra (tensorboard is not installed)",
        ),
        (
            "optuna",
            ["train", "--dataset", "d", "--output_dir", "o", "--hp_search_trials", "2"],
            "the 'tracking' extra (optuna is not installed): pip install \"geohf[tracking]\"",
        ),
    ],
)
def test_a_missing_extra_names_the_extra(module, argv, message, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == module else real_find_spec(name, *a)
    )
    run = cli(*argv)
    assert run.code == 2 and run.errors == [run.err.strip()] and message in run.err, run.err


def test_missing_extra_message():
    from geohf.errors import extra_message, missing_extra

    err = ModuleNotFoundError("No module named 'pillow_heif'", name="pillow_heif")
    assert missing_extra(err) == ("pillow_heif", "heif")
    assert missing_extra(ModuleNotFoundError("x", name="numpy")) is None
    assert extra_message("geohf export", "onnx", "export") == (
        "geohf export needs the 'export' extra (onnx is not installed): pip install \"geohf[export]\""
    )


def test_debug_shows_the_traceback_and_ctrl_c_is_130(cli, monkeypatch):
    argv = ["evaluate", "--model", "./missing", "--dataset", "d", "--output", "o"]
    with pytest.raises(UserError, match="no such model folder"):
        main([*argv, "--debug"])
    monkeypatch.setenv("GEOHF_DEBUG", "1")
    with pytest.raises(UserError):
        main(argv)
    monkeypatch.delenv("GEOHF_DEBUG")

    def interrupted(argv, parser):
        raise KeyboardInterrupt

    monkeypatch.setattr("geohf.cli._run", interrupted)
    run = cli(*argv)
    assert run.code == 130 and run.err == "error: interrupted\n"


def test_an_unexpected_import_error_is_not_hidden(cli, fake_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "geohf.inference.predictor", None)  # a broken install, not a missing extra
    with pytest.raises(ImportError):
        cli("evaluate", "--model", fake_model, "--dataset", REPO, "--output", "o")


@pytest.mark.parametrize(
    "name, local",
    [
        ("./model", True),
        ("/abs/model", True),
        ("~/model", True),
        ("runs/demo/model", True),
        ("model.safetensors", True),
        ("tests/nope", True),  # tests/ exists here: a typo of a folder
        ("org/name", False),
        ("typo_dir", False),
        ("org/model-v1.5", False),
    ],
)
def test_what_looks_like_a_path(name, local, monkeypatch):
    monkeypatch.chdir(REPO)
    assert looks_local(name) is local


def test_flags_agree_across_subcommands():
    from geohf.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    defaults = {}
    for name in ("predict", "evaluate", "app", "export", "demo"):
        for action in sub[name]._actions:
            for option in action.option_strings:
                defaults.setdefault(option, {})[name] = action.default
    assert defaults["--bf16"] == {"predict": None, "evaluate": None}
    assert set(defaults["--batch-size"].values()) <= {32, None}
    assert "--image_column" in defaults and "--batch_size" in defaults and "--dataset-revision" in defaults
    assert {"predict", "evaluate", "export", "demo"} <= set(defaults["-o"]) and defaults["--split"] == {
        "predict": "test",
        "evaluate": "test",
        "app": "test",
    }


def test_collect_parser_names_match_the_collectors():
    from geohf.collect import names, plan, providers, regions

    assert tuple(sorted(plan.SAMPLERS)) == names.SAMPLER_NAMES
    assert tuple(sorted(providers.PROVIDERS)) == names.PROVIDER_NAMES
    assert regions.SPEC_HELP is names.SPEC_HELP
    with pytest.raises(ValueError, match="--source must be outdoor or default"):
        providers.ViewOptions(source="indoor")
    assert providers.ViewOptions(source=names.STREETVIEW_SOURCES[-1]).source == "default"


def test_parser_choices_are_the_owners_names():
    """The choices ``geohf``'s parser offers come from torch-free ``names`` modules the owners use."""
    import pandas as pd

    from geohf.data import layouts, names, sources, splits
    from geohf.evaluation import benchmark
    from geohf.evaluation import names as evaluation_names
    from geohf.geo import boundaries
    from geohf.geo import names as geo_names
    from geohf.inference import names as inference_names
    from geohf.inference import retrieval, writers

    assert set(names.LAYOUT_NAMES) == {*layouts.LAYOUTS, "bluemarble"} and sources.SOURCES is names.SOURCES
    assert splits.assign_splits.__defaults__[0] == names.SPLIT_BY[0]
    with pytest.raises(UserError, match="--split-by must be 'location' or 'block'"):
        splits.assign_splits(pd.DataFrame({"latitude": [0.0], "longitude": [0.0]}), by="country")
    assert benchmark.BENCHMARKS is evaluation_names.BENCHMARKS
    assert writers.FORMATS is inference_names.FORMATS and set(writers.SUFFIX_FORMATS.values()) == set(writers.FORMATS)
    assert retrieval.SEARCHES is inference_names.SEARCHES and retrieval.BACKENDS is inference_names.BACKENDS
    assert (boundaries.FULL_NAME, boundaries.LOWRES_NAME) == geo_names.BOUNDARY_NAMES


def _leaf_parsers(parser, prefix=()):
    """(words, parser) of every command that runs: ``("dataset", "build")``, ``("predict",)``..."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _leaf_parsers(sub, (*prefix, name))
    if parser.get_default("func") is not None:
        yield prefix, parser


def test_every_command_parses_into_its_arguments_dataclass():
    """Each command's dataclass has one field per flag (dest) of its parser, and the parser's defaults."""
    from dataclasses import MISSING, fields

    from geohf.cli import build_parser

    commands = dict(_leaf_parsers(build_parser()))
    assert {w[0] for w in commands} == {
        "demo", "predict", "dataset", "evaluate", "index", "convert", "collect", "app", "export", "train"
    }  # fmt: skip
    for words, parser in commands.items():
        command = parser.get_default("func")
        dests = {a.dest for a in parser._actions if a.dest != "help"}
        declared = {f.name: f for f in fields(command.arguments)}
        assert dests | ({command.forward} if command.forward else set()) == set(declared), words
        for action in parser._actions:
            if action.dest in declared and not action.required and action.dest != "help":
                f = declared[action.dest]
                default = f.default_factory() if f.default is MISSING else f.default
                assert default == action.default, (words, action.dest)


def test_train_is_routed_by_the_parser_and_gets_every_flag_after_it(monkeypatch):
    import geohf.commands.train as train

    seen = []
    monkeypatch.setattr(train, "train", lambda argv: seen.append(argv))
    flags = ["--dataset", "d", "--learning_rate", "-5e-5", "--debug", "underflow_overflow", "--help", "--config"]
    assert main(["train", *flags]) == 0 and seen == [flags]
    assert main(["--debug", "train"]) == 0 and seen[-1] == []


def test_check_source_against_a_local_hub(hub, tmp_path):
    """A repo the Hub has passes the probe; one it lacks is a user error (no retries, no traceback)."""
    folder = tmp_path / "probe"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    hub.publish(folder, "org/probe-model", "model")
    hub.publish(folder, "org/probe-data", "dataset")
    code = (
        "from geohf.errors import UserError, check_source\n"
        "assert check_source('org/probe-model', 'model') == 'org/probe-model'\n"
        "assert check_source('org/probe-data', 'dataset', 'main') == 'org/probe-data'\n"
        "try:\n    check_source('org/absent-model', 'model')\n"
        "except UserError as err:\n    print(err)\n"
        "else:\n    raise SystemExit('the absent repo passed')\n"
    )
    env = {**hub.env(tmp_path / "hf"), "PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "org/absent-model" in proc.stdout


def test_running_from_the_parent_of_a_clone_named_geohf_says_so(tmp_path):
    """``cd ..`` out of a clone named ``geohf`` and ``import geohf`` finds the clone folder, not the package."""
    import shutil

    repo = Path(__file__).resolve().parents[1]
    clone = tmp_path / "geohf"
    (clone / "geohf").mkdir(parents=True)
    shutil.copy(repo / "__init__.py", clone / "__init__.py")
    shutil.copy(repo / "pyproject.toml", clone / "pyproject.toml")
    (clone / "geohf" / "__init__.py").write_text("raise SystemExit('the inner package must not be reached')\n")
    code = "import geohf"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: 'import geohf' found the geohf clone folder") and str(clone) in last
    assert f"cd {clone}" in last and f"pip install -e {clone}" in last
    # imported under any other name (pytest's rootdir package, tools) the file does nothing
    proc = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; s = u.spec_from_file_location('x', 'geohf/__init__.py'); "
         "s.loader.exec_module(u.module_from_spec(s)); print('ok')"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.stdout.strip() == "ok", proc.stderr
