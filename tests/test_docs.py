"""The documentation the product carries: every relative link leads to a file of the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCUMENTS = [
    ROOT / "README.md",
    ROOT / "deploy" / "README.md",
    ROOT / "bench" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
# [text](target), ![alt](target) and [label]: target
_LINK_RE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_RE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
# A path written as code (`../somewhere/file.md`) is a reference a reader follows too.
_CODE_PATH_RE = re.compile(r"`([\w./-]*/[\w.-]+\.md)`")


def references(text: str) -> list[str]:
    found = _LINK_RE.findall(text) + _REFERENCE_RE.findall(text) + _CODE_PATH_RE.findall(text)
    return [t for t in found if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]  # not URLs, anchors


def test_the_documents_exist() -> None:
    assert {"callback.md", "api.md"} <= {p.name for p in DOCUMENTS}
    for document in DOCUMENTS:
        assert document.is_file(), document


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(document: Path) -> None:
    broken = []
    for target in references(document.read_text()):
        path = (document.parent / target.split("#", 1)[0]).resolve()
        if not path.is_relative_to(ROOT) or not path.exists():
            broken.append(target)
    assert broken == [], f"{document.relative_to(ROOT)} points outside or nowhere: {broken}"


def test_the_link_checker_sees_links() -> None:
    text = "[a](docs/api.md) ![b](x.png#y) [c](https://e.example) [d](#here) `../x/y.md`\n[e]: z.md"
    assert references(text) == ["docs/api.md", "x.png#y", "z.md", "../x/y.md"]
