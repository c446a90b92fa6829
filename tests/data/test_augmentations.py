"""Camera / imagery degradations for resolution-robust training."""

import numpy as np
import pytest
import torch
from PIL import Image

from geohf.data.transforms import AugmentConfig, CameraDegrade, SeededDataset, train_transform
from geohf.modeling import GeoImageProcessor


def _image(w: int = 64, h: int = 48) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def _always(monkeypatch):
    monkeypatch.setattr("geohf.data.transforms.DEGRADE_P", 1.0)


@pytest.mark.parametrize(
    "augment",
    [
        AugmentConfig(downscale=3.0),
        AugmentConfig(jpeg_quality=30),
        AugmentConfig(blur=1.5),
        AugmentConfig(white_balance=0.2),
    ],
    ids=["downscale", "jpeg", "blur", "white_balance"],
)
def test_each_degradation_changes_the_image_and_keeps_its_size(augment, monkeypatch):
    _always(monkeypatch)
    image = _image()
    torch.manual_seed(0)
    out = CameraDegrade(augment)(image)
    assert out.size == image.size and out.mode == "RGB"
    diff = np.abs(np.asarray(out, dtype=np.int16) - np.asarray(image, dtype=np.int16))
    assert diff.mean() > 1.0  # noise in, a real change out


def test_downscale_removes_fine_detail(monkeypatch):
    _always(monkeypatch)
    checker = np.indices((64, 64)).sum(0) % 2 * 255  # one-pixel checkerboard: all high frequency
    image = Image.fromarray(np.stack([checker] * 3, -1).astype(np.uint8))
    torch.manual_seed(1)
    out = np.asarray(CameraDegrade(AugmentConfig(downscale=3.0))(image), dtype=np.float32)
    assert out.std() < 0.5 * np.asarray(image, dtype=np.float32).std()


def test_white_balance_gains_stay_in_range(monkeypatch):
    _always(monkeypatch)
    flat = Image.new("RGB", (8, 8), (100, 100, 100))
    for seed in range(20):
        torch.manual_seed(seed)
        out = np.asarray(CameraDegrade(AugmentConfig(white_balance=0.1))(flat), dtype=np.float32)[0, 0]
        assert np.all(out >= 89.5) and np.all(out <= 110.5)


def test_degradations_follow_the_seeded_dataset():
    """The same (seed, epoch, index) augments the same way, so a resumed run sees identical batches."""
    processor = GeoImageProcessor(image_size=32, crop_pct=1.0)
    transform = train_transform(processor, AugmentConfig.camera())
    images = [_image() for _ in range(4)]

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(images[i])

    a, b = SeededDataset(Items(), seed=3), SeededDataset(Items(), seed=3)
    torch.manual_seed(123)
    first = [a[i] for i in range(4)]
    torch.manual_seed(456)  # the global RNG does not matter
    assert all(torch.equal(x, b[i]) for i, x in enumerate(first))
    b.set_epoch(1)
    assert not all(torch.equal(x, b[i]) for i, x in enumerate(first))
    assert first[0].shape == (3, 32, 32)


def test_camera_preset_is_on_and_off_by_default():
    assert AugmentConfig.camera().degrades and AugmentConfig.camera().enabled
    assert not AugmentConfig().degrades and not AugmentConfig().enabled


def test_degradations_only_then_the_eval_transform(monkeypatch):
    """With no geometric augmentation the degraded image goes through the processor's own transform."""
    monkeypatch.setattr("geohf.data.transforms.DEGRADE_P", 0.0)  # nothing drawn: the eval tensor exactly
    processor = GeoImageProcessor(image_size=40, crop_pct=0.875)
    image = _image(70, 50)
    assert torch.equal(train_transform(processor, AugmentConfig.camera())(image), processor.transform(image))
