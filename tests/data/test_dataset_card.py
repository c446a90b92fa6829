"""The dataset card says only what is true of the folder next to it."""

from __future__ import annotations

import re


def test_card_cites_only_files_in_the_folder_and_a_real_command(tiny_dataset):
    card = (tiny_dataset / "README.md").read_text()
    assert not (tiny_dataset / "skipped.csv").exists()
    assert "skipped.csv" not in card  # nothing was skipped: no file to point at
    assert "(``)" not in card and ": ``." not in card  # no empty build command
    assert "geohf dataset build --layout bluemarble --output bluemarble --train 160" in card
    assert not re.search(r"https?://github\.com/geohf", card)  # the project has no public URL
    assert "Natural Earth 10m admin-1 (geohf" in card  # boundaries by name and version, not a path
    assert "/tmp" not in card and "/home" not in card
