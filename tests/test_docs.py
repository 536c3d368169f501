"""The documentation site builds with `mkdocs build --strict`, every page is reachable from its nav, and
every relative link in the README and the pages points at a file that exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS = REPO_ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))

# A markdown link or image, `[text](target)` or `![alt](target "title")`: the target up to a space or `)`.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def nav_pages(nav: object) -> set[str]:
    """Every page a `nav:` entry names, however deeply nested in sections."""
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, list):
        return set().union(*(nav_pages(entry) for entry in nav)) if nav else set()
    if isinstance(nav, dict):
        return set().union(*(nav_pages(value) for value in nav.values())) if nav else set()
    return set()


def relative_links(markdown: str) -> list[str]:
    """The link targets of a markdown text that name files of this repository (no URL, no bare anchor),
    leaving out code blocks and inline code, where brackets are code, not links."""
    text = INLINE_CODE.sub("", FENCE.sub("", markdown))
    targets = [m.group(1) for m in LINK.finditer(text)]
    return [t for t in targets if not re.match(r"^([a-z][a-z0-9+.-]*:|#|/)", t, re.I)]


def test_link_finder_skips_urls_anchors_and_code():
    text = (
        '[a](docs/a.md) ![b](b.png "t") [c](https://x.org) [d](#here) `[e](e.md)`\n'
        "```python\nx = [f](g)\n```\n[h](docs/h.md#part)"
    )
    assert relative_links(text) == ["docs/a.md", "b.png", "docs/h.md#part"]


def test_api_reference_covers_every_public_name():
    import nbtrain
    from nbtrain import models

    # torchvision's model functions are listed in a table on the Models page: their docs are torchvision's.
    architectures = {name for name in nbtrain.__all__ if getattr(models, name, None) is getattr(nbtrain, name)}
    documented = set(re.findall(r"^::: nbtrain\.(\w+)", "\n".join(p.read_text() for p in PAGES), re.M))
    # Modules and functions of other libraries that the course's star import gives: their docs are theirs.
    others = {"models", "np", "partial", "pd", "plt", "torch"}
    missing = set(nbtrain.__all__) - architectures - others - documented
    assert missing == set(), "public names with no `::: nbtrain.<name>` in docs/api/*.md"


def test_every_docs_page_is_in_the_nav():
    config = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text())
    in_nav = nav_pages(config["nav"])
    pages = {p.relative_to(DOCS).as_posix() for p in PAGES}
    assert pages - in_nav == set(), "pages missing from mkdocs.yml's nav"
    assert in_nav - pages == set(), "nav entries with no page under docs/"


@pytest.mark.parametrize("page", [REPO_ROOT / "README.md", *PAGES], ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_relative_links_point_at_existing_files(page: Path):
    missing = [t for t in relative_links(page.read_text()) if not (page.parent / t.split("#")[0]).exists()]
    assert missing == [], f"{page.relative_to(REPO_ROOT)} links to files that do not exist"


@pytest.mark.slow
def test_mkdocs_builds_strict(tmp_path):
    # --strict turns every warning into a failure: a broken link, a page off the nav, a docstring that
    # griffe cannot parse, a public name the API reference names and nbtrain no longer exports. Not --quiet:
    # mkdocs counts only the warnings it logs.
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "api" / "learner" / "index.html").exists()
