"""Every relative link of the documentation resolves: README.md, CHANGELOG.md and docs/*.md.

A link ``[text](path)`` or ``[text](path#anchor)`` (images too) must name an existing file or folder,
relative to the page; an anchor must match a heading of the target page by GitHub's slug rule. Links to
http(s), mailto and other schemes are not checked (no network), nor is anything inside code.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([p for p in (ROOT / "README.md", ROOT / "CHANGELOG.md") if p.is_file()]
               + list((ROOT / "docs").glob("*.md")))

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^\"']*[\"'])?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose(text: str) -> str:
    """The text without fenced code blocks, inline code and HTML comments."""
    return INLINE_CODE.sub("", COMMENT.sub("", FENCE.sub("", text)))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = "".join(ch for ch in text.lower() if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of ``page``, with GitHub's -1, -2 ... suffixes for repeated headings."""
    seen: dict[str, int] = {}
    out = set()
    for _, title in HEADING.findall(FENCE.sub("", COMMENT.sub("", page.read_text(encoding="utf-8")))):
        base = slug(title)
        count = seen.get(base, 0)
        out.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return out


def broken_links(page: Path) -> list[str]:
    problems = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if SCHEME.match(target):  # http:, https:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{target}: {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest} "
                            f"does not exist")
        elif anchor and dest.is_file() and dest.suffix == ".md" and unquote(anchor).lower() not in anchors(dest):
            problems.append(f"{target}: no heading with the anchor #{anchor} in {dest.relative_to(ROOT)}")
    return problems


def test_pages_found():
    assert any(p.parent.name == "docs" for p in PAGES), "no docs/*.md found"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    problems = broken_links(page)
    assert not problems, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(f"  {p}" for p in problems)


def test_slug_rule():
    assert slug("evaluate.py") == "evaluatepy"
    assert slug("The presets at 1 to 16 GPUs") == "the-presets-at-1-to-16-gpus"
    assert slug("1 vs 2 processes") == "1-vs-2-processes"
    assert slug("Layout, and where to add things") == "layout-and-where-to-add-things"
    assert slug("The `train.bn_group` setting") == "the-trainbn_group-setting"
