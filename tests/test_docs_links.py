"""Every relative link of README.md and docs/**/*.md leads to a file that exists, and every
`#anchor` to a heading of its target, slugged as GitHub slugs headings. Pure text: fast."""
from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO

# [text](target) and ![alt](target), with an optional "title" after the target
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.DOTALL)
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)
HTML_ANCHOR = re.compile(r"<a\s[^>]*(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//")


def without_code(text: str, inline: bool = True) -> str:
    """The text with fenced code blocks (and inline code spans) blanked: links there are code."""
    text = FENCE.sub("", text)
    return INLINE_CODE.sub("", text) if inline else text


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: link text kept, lower case, punctuation dropped
    (letters, digits, `_`, `-` and spaces stay), spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a page offers: its headings' slugs (repeats numbered -1, -2, … as GitHub
    numbers them) and explicit <a name/id> anchors."""
    found, seen = set(), {}
    for heading in HEADING.findall(without_code(text, inline=False)):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found | set(HTML_ANCHOR.findall(text))


def broken_links(page: Path, root: Path) -> list[str]:
    """One line per relative link of `page` whose file or heading is missing."""
    problems = []
    for target in LINK.findall(without_code(page.read_text(encoding="utf-8"))):
        if SCHEME.match(target):
            continue  # a web address: not checked offline
        path, _, anchor = target.partition("#")
        if not path:
            linked = page
        elif path.startswith("/"):
            linked = root / path.lstrip("/")
        else:
            linked = page.parent / path
        where = f"{page.relative_to(root)}: ({target})"
        if not linked.exists():
            problems.append(f"{where}: no file {linked.resolve().relative_to(root.resolve())}"
                            if linked.resolve().is_relative_to(root.resolve())
                            else f"{where}: points outside the repository")
        elif anchor and (linked.is_dir() or linked.suffix != ".md"):
            problems.append(f"{where}: an anchor into a file that is not a markdown page")
        elif anchor and anchor.lower() not in anchors(linked.read_text(encoding="utf-8")):
            problems.append(f"{where}: no heading #{anchor} in {linked.name}")
    return problems


def pages(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def test_every_relative_link_of_the_readme_and_docs_resolves():
    found = pages(REPO)
    assert len(found) > 10 and (REPO / "docs" / "layout.md") in found
    problems = [line for page in found for line in broken_links(page, REPO)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_checker_catches_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# B\n\n## Full runs: the paper's commands\n")
    (tmp_path / "README.md").write_text(
        "# Top\n\n"
        "[fine](docs/b.md#full-runs-the-papers-commands) ![picture](docs/b.md) "
        "[web](https://x.y/z)\n"
        "[here](#top) [gone](docs/missing.md) [no such heading](docs/b.md#nowhere)\n"
        "`[code span](docs/nothing.md)`\n\n"
        "```bash\n[fenced](docs/nothing.md)\n```\n")
    problems = [line for page in pages(tmp_path) for line in broken_links(page, tmp_path)]
    assert problems == ["README.md: (docs/missing.md): no file docs/missing.md",
                        "README.md: (docs/b.md#nowhere): no heading #nowhere in b.md"]


def test_anchors_are_slugged_as_github_slugs_them():
    assert slug("Full runs: the paper's commands") == "full-runs-the-papers-commands"
    assert slug("The `quick` preset, run on this 2-core CPU") == \
        "the-quick-preset-run-on-this-2-core-cpu"
    assert slug("See [toy.md](toy.md) now") == "see-toymd-now"
    page = "# Results\n\n## Results\n\n```\n# not a heading\n```\n"
    assert anchors(page) == {"results", "results-1"}
