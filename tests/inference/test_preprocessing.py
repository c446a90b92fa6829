"""The batched uint8 tensor preprocessing against timm's PIL eval transform, and the fast PNG decode."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from geohf.images import decode_image, decode_pixels
from geohf.modeling import GeoImageProcessor
from geohf.modeling.image_processing_geohf import reference_tolerance


def _levels(a: torch.Tensor, b: torch.Tensor, std) -> torch.Tensor:
    """|a - b| in uint8 levels of the unnormalised image."""
    return (a - b).abs() * torch.tensor(std).view(-1, 1, 1) * 255.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 32, "crop_pct": 1.0},
        {"image_size": 96, "crop_pct": 1.0},
        {"image_size": 224, "crop_pct": 0.875},
        {"image_size": 48, "interpolation": "bilinear", "crop_pct": 0.9, "image_std": [0.25] * 3},
        {"image_size": 40, "interpolation": "nearest", "crop_pct": 0.95},
    ],
)
def test_tensor_path_matches_timm_within_tolerance(kwargs):
    """Up- and downsampling, square and not: at most two uint8 levels off, on under 3% of the values
    (pure noise upsampled 3.5×; real tiles: 0.2%)."""
    proc = GeoImageProcessor(**kwargs)
    tol = reference_tolerance(proc.image_std)
    rng = np.random.default_rng(0)
    images = []
    for h, w in [(64, 64), (60, 80), (333, 250), (31, 47)]:
        noise = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        images += [noise, noise.resize((max(w // 4, 1), max(h // 4, 1))).resize((w, h), Image.BICUBIC)]
    batch = proc(images)["pixel_values"]  # mixed sizes: one resize per size group
    assert batch.is_contiguous(memory_format=torch.channels_last)
    for image, fast in zip(images, batch):
        ref = proc.reference_transform(image)
        assert fast.shape == ref.shape
        diff = (fast - ref).abs()
        assert diff.max() <= tol, float(diff.max())
        assert (_levels(fast, ref, proc.image_std) > 0.01).float().mean() < 0.03  # noise upsampled: the worst case
        assert torch.equal(proc.transform(image), fast)  # one image or a batch: the same numbers
    if kwargs.get("interpolation") == "nearest":  # a gather at PIL's own indices: exact
        assert all(torch.allclose(proc.reference_transform(im), t, atol=1e-6) for im, t in zip(images, batch))


def test_fast_path_on_tiles_same_predictions(tiny_model_dir, tiny_dataset, tmp_path):
    """Real tiles as PNG files: `geohf predict`'s path (libpng decode + batched tensors) vs the reference
    (PIL decode + timm's transform) within the tolerance, and the same top-1 class for every tile."""
    from datasets import load_dataset

    from geohf.inference.predictor import GeoPredictor
    from geohf.inference.stream import predict_files

    predictor = GeoPredictor(str(tiny_model_dir), bf16=False)
    proc = predictor.processor
    files = []
    for i, row in enumerate(load_dataset(str(tiny_dataset), split="test")):
        files.append(tmp_path / f"{i}.png")
        row["image"].save(files[-1])
    ref = torch.stack([proc.reference_transform(decode_image(f).image) for f in files])
    fast = proc.pixel_values([decode_pixels(f).pixels for f in files])
    assert (fast - ref).abs().max() <= reference_tolerance(proc.image_std)
    expected = predictor.predict_tensors(ref)
    assert np.array_equal(predictor.predict_tensors(fast).pred_class, expected.pred_class)
    run = predict_files(predictor, files, batch_size=8)
    assert [r["top_k"][0]["label"] for r in run.records] == [predictor.cells.names[i] for i in expected.pred_class]


@pytest.fixture(params=["imagecodecs", "torchvision"])
def png_backend(request, monkeypatch):
    """:func:`decode_pixels` with each libpng :data:`~geohf.images.PNG_DECODERS` holds (both in ``geohf[dev]``)."""
    from geohf import images

    decode = images.PNG_DECODERS[request.param]()
    if decode is None:
        pytest.skip(f"{request.param} is not installed")
    monkeypatch.setattr(images, "png_decoder", lambda: (request.param, decode))
    return request.param


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "I;16", "1"])
def test_decode_pixels_is_decode_image(mode, png_backend):
    """Plain 8-bit PNGs go through libpng, the rest through PIL: the same RGB pixels either way."""
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (21, 34, 4), dtype=np.uint8)
    if mode == "I;16":
        image = Image.fromarray(array[..., 0].astype(np.uint16) * 257)
    else:
        image = Image.fromarray(array).convert(mode)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    fast = decode_pixels("x.png", buf.getvalue())
    assert fast.pixels.dtype == np.uint8 and fast.pixels.shape == (21, 34, 3)
    assert np.array_equal(fast.pixels, np.asarray(decode_image("x.png", buf.getvalue()).image))


def test_png_decoder_prefers_imagecodecs_and_torchvision_warns_nothing():
    """imagecodecs (``geohf[fast]``) is taken where installed. torchvision 0.29's ``decode_png`` warns (a
    deprecation) and logs on every call, interpreter time that serialises the decode threads; geohf calls its
    libpng op directly: the same pixels, no warning."""
    import warnings

    from torchvision.io import decode_png

    from geohf.images import PNG_DECODERS, _torchvision_png, png_decoder

    installed = [name for name, make in PNG_DECODERS.items() if make() is not None]
    assert png_decoder()[0] == installed[0]
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (9, 13, 3), dtype=np.uint8)).save(buf, format="PNG")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast = _torchvision_png()(buf.getvalue())
    assert not caught
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = decode_png(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)).permute(1, 2, 0).numpy()
    assert np.array_equal(fast, ref)


def test_decode_pixels_keeps_exif_and_errors(tmp_path, png_backend):
    """A PNG with EXIF (orientation) takes the PIL path; broken files raise the decoder's errors."""
    from geohf.images import ImageLoadError

    image = Image.fromarray(np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    path = tmp_path / "rotated.png"
    image.save(path, exif=exif)
    assert decode_pixels(path).pixels.shape == (4, 6, 3)
    assert np.array_equal(decode_pixels(path).pixels, np.asarray(decode_image(path).image))
    truncated = path.read_bytes()[:60]
    with pytest.raises(ImageLoadError, match="truncated|not an image"):
        decode_pixels("cut.png", truncated)
    with pytest.raises(ImageLoadError, match="no such file"):
        decode_pixels(tmp_path / "missing.png")


def test_decode_pixels_leaves_pngs_with_metadata_to_pil(tmp_path, png_backend):
    """The libpng path takes only PNGs whose chunks carry nothing PIL would act on: a transparency key,
    an EXIF profile in a text chunk or an XMP orientation go through PIL, with the same pixels and the
    same orientation as :func:`decode_image`; a folder or a cut file fail as there."""
    from PIL import PngImagePlugin

    from geohf.images import ImageLoadError, _plain_png

    image = Image.fromarray(np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3))
    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    )
    cases = {"plain": {}, "transparency key": {"transparency": (0, 0, 0)}}
    for name, text in {
        "raw EXIF profile": ("Raw profile type exif", "exif\n 10\n00"),
        "XMP": ("XML:com.adobe.xmp", xmp),
    }.items():
        info = PngImagePlugin.PngInfo()
        info.add_itxt(*text) if name == "XMP" else info.add_text(*text, zip=True)
        cases[name] = {"pnginfo": info}
    for name, kwargs in cases.items():
        buf = io.BytesIO()
        image.save(buf, format="PNG", **kwargs)
        data = buf.getvalue()
        assert _plain_png(data) == (name == "plain"), name
        fast, reference = decode_pixels("x.png", data), decode_image("x.png", data).image
        assert np.array_equal(fast.pixels, np.asarray(reference)), name
    assert decode_image("x.png", data).image.size == (6, 4)  # the XMP orientation applied: PIL's path
    assert not _plain_png(data[: len(data) - 12])  # no IEND
    with pytest.raises(ImageLoadError, match="is a folder"):
        decode_pixels(tmp_path)
