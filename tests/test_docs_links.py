"""Every link between the repository's Markdown pages resolves: the file exists and its #anchor is a heading.

GitHub's heading anchors (lower case, punctuation dropped, spaces to hyphens, ``-1``, ``-2`` for repeats), which
MkDocs' ``toc`` gives for these headings too. ``mkdocs build --strict`` checks the site's pages; this also covers
README.md, CHANGELOG.md, the card templates, and ``docs/....md#anchor`` named in code and docstrings.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "CHANGELOG.md", "docs/*.md", "docs/reference/*.md", "model_card/*.md", "dataset_card/*.md"]
LINK = re.compile(r"\]\(([^)\s]*?)(?:#([^)\s]+))?\)")  # [text](path#anchor)
NAMED = re.compile(r"(?<!\()\bdocs/([\w/-]+\.md)#([\w-]+)")  # docs/page.md#anchor in code or prose


def anchors(page: Path) -> set[str]:
    found, seen, fenced = set(), {}, False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        match = None if fenced else re.match(r"#{1,6} +(.+?)#*\s*$", line)
        if match:
            text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))  # a link in a heading: its text
            slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def broken_links() -> list[str]:
    broken = []
    pages = sorted({p for pattern in PAGES for p in REPO.glob(pattern)})
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for target, anchor in LINK.findall(text):
            if re.match(r"[a-z]+:", target) or not (target == "" or target.endswith(".md")):
                continue  # a URL, an image or another file type
            dest = page if target == "" else (page.parent / target).resolve()
            if not dest.is_file():
                broken.append(f"{page.relative_to(REPO)}: {target} does not exist")
            elif anchor and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(REPO)}: {target or page.name}#{anchor} is no heading there")
    sources = [*pages, *REPO.glob("geohf/**/*.py"), *REPO.glob("benchmarks/*.py"), *REPO.glob("scripts/*.py")]
    for source in sources:
        for target, anchor in NAMED.findall(source.read_text(encoding="utf-8")):
            dest = REPO / "docs" / target
            if not dest.is_file() or anchor not in anchors(dest):
                broken.append(f"{source.relative_to(REPO)}: docs/{target}#{anchor} does not resolve")
    return broken


def test_markdown_links_resolve():
    assert not broken_links(), "\n".join(broken_links())


def test_anchor_rule():
    page = REPO / "docs" / "benchmarks.md"
    assert {"resolution-shift-camera-augmentations", "prediction-geohf-predict-on-image-files"} <= anchors(page)
