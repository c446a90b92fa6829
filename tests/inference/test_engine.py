"""Batches a few at a time (``geohf.inference.engine``), and the pipeline's batches (transformers' iterator)."""

import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from geohf.images import ImageLoadError
from geohf.inference.engine import in_streams


def test_in_streams_keeps_order_errors_and_thread_counts(threads_kept):
    """Results come in input order however long each takes; ``streams`` run at once, each with its share of
    torch's threads; an exception comes out in its place; stopping early leaves the caller's count."""
    threads = torch.get_num_threads()
    running, peak, lock = [0], [0], threading.Lock()

    def slow(i: int) -> tuple[int, int]:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02 * (i % 3 == 0))  # some finish before the ones started earlier
        with lock:
            running[0] -= 1
        return i, torch.get_num_threads()

    out = list(in_streams(slow, range(12), 2))
    assert [i for i, _ in out] == list(range(12))
    assert {n for _, n in out} == {max(1, threads // 2)} and peak[0] == 2
    assert torch.get_num_threads() == threads

    def fails_at_5(i: int) -> int:
        if i == 5:
            raise ValueError("five")
        return i

    got = []
    with pytest.raises(ValueError, match="five"):
        for i in in_streams(fails_at_5, range(10), 2):
            got.append(i)
    assert got == [0, 1, 2, 3, 4]
    stopped = in_streams(slow, range(100), 2)
    next(stopped)
    stopped.close()
    threads_kept(threads)


@pytest.fixture(scope="module")
def geo(tiny_model_dir):
    from transformers import pipeline

    import geohf.inference.pipeline  # noqa: F401  (registers pipeline("image-geolocation"))

    return pipeline("image-geolocation", model=str(tiny_model_dir), device="cpu")


def test_pipeline_batches_answer_as_one_at_a_time(geo, tmp_path):
    """Lists and generators of images of several sizes, batched by transformers' own iterator (``batch_size``,
    with ``num_workers`` processes decoding) or one at a time: the same records in the same order; a bad file
    raises as it does there."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (20 + i, 30 + 2 * i, 3), dtype=np.uint8)) for i in range(11)]
    one = geo(images, batch_size=1)
    two = geo(images, batch_size=4)
    generated = list(geo((im for im in images), batch_size=4))
    workers = geo(images, batch_size=4, num_workers=2)
    single = [geo(im) for im in images[:3]]
    assert len(one) == len(two) == len(generated) == len(workers) == 11
    for a, b, c, d in zip(one, two, generated, workers):
        assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]] == [t["label"] for t in c["top_k"]]
        assert (a["pred_latitude"], a["pred_longitude"], a["score"]) == pytest.approx(
            (b["pred_latitude"], b["pred_longitude"], b["score"]), abs=1e-4
        )
        assert b == c == d
    for a, s in zip(one, single):
        assert a["pred_country_code"] == s["pred_country_code"]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(ImageLoadError):
        geo([images[0], str(broken), images[1]], batch_size=2)
