"""Every markdown document the repository names is in the repository, and every section or anchor it cites exists.

A docstring, preset comment, document or test that says "see <doc>.md §3" must be readable by whoever clones
mfmseg: the named document exists (a path from the repository root or from the citing file's folder; a bare name
anywhere in the tree), a cited section number is a numbered heading of that document (`## 3. ...`), a cited anchor
(`<doc>.md#name`) is one of its headings, and a relative link of a markdown document (`](figures/x.png)`) points at
a file. Names of files that mfmseg *writes* (a sweep's results, the demo's report) are not documents of the
repository and are allowed.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCANNED = ["src", "docs", "tests", "studies", "benchmarks", "README.md", "CHANGELOG.md"]  # configs/ is in src/
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt"}
SKIPPED_DIRS = {"__pycache__", ".git", ".venv", "work_dirs", ".pytest_cache"}
# markdown files that commands write into their output folders (mfmseg sweep / demo, `mfmseg cost --all > table.md`)
WRITTEN = {"results.md", "report.md", "table.md"}

URL = re.compile(r"[a-z]+://\S+")
DOC = re.compile(r"(?<![\w.-])(?P<path>[\w./-]*[\w-]\.md)(?![\w-])"
                 r"(?:#(?P<anchor>[\w-]+)|[ \t]*§[ \t]*(?P<section>\d+(?:\.\d+)*))?")
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(?P<title>.+?)[ \t]*#*$", re.MULTILINE)
NUMBERED = re.compile(r"(?P<number>\d+(?:\.\d+)*)\.?[ \t]")


def scanned_files(repo: Path) -> list[Path]:
    files = []
    for name in SCANNED:
        top = repo / name
        if top.is_file():
            files.append(top)
        elif top.is_dir():
            files += [p for p in sorted(top.rglob("*")) if p.is_file() and p.suffix in TEXT_SUFFIXES
                      and not SKIPPED_DIRS.intersection(p.relative_to(repo).parts)]
    return files


def slug(title: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def headings(doc: Path) -> tuple[set[str], set[str]]:
    """The numbers of a document's numbered headings and the anchors of all its headings."""
    numbers, anchors = set(), set()
    for m in HEADING.finditer(doc.read_text(encoding="utf-8")):
        anchors.add(slug(m["title"]))
        number = NUMBERED.match(m["title"])
        if number:
            numbers.add(number["number"])
    return numbers, anchors


def resolve(repo: Path, citing: Path, path: str, by_name: dict[str, Path]) -> Path | None:
    if "/" not in path:
        return by_name.get(path)
    for base in (repo, citing.parent):
        candidate = (base / path).resolve()
        if candidate.is_file():
            return candidate
    return None


def broken_references(repo: Path) -> list[str]:
    """'file:line: what' for every reference that does not resolve."""
    files = scanned_files(repo)
    by_name = {p.name: p for p in sorted(repo.rglob("*.md"))
               if not SKIPPED_DIRS.intersection(p.relative_to(repo).parts)}
    problems = []
    for citing in files:
        for number, line in enumerate(citing.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            line = URL.sub("", line)
            where = f"{citing.relative_to(repo)}:{number}"
            for m in DOC.finditer(line):
                if Path(m["path"]).name in WRITTEN:
                    continue
                doc = resolve(repo, citing, m["path"], by_name)
                if doc is None:
                    problems.append(f"{where}: {m['path']} is not in the repository")
                    continue
                numbers, anchors = headings(doc)
                if m["section"] and m["section"] not in numbers:
                    problems.append(f"{where}: {m['path']} has no section {m['section']} (has {sorted(numbers)})")
                if m["anchor"] and m["anchor"] not in anchors:
                    problems.append(f"{where}: {m['path']} has no heading #{m['anchor']}")
            if citing.suffix != ".md":
                continue
            for m in LINK.finditer(line):
                target = m["target"].split("#", 1)[0]
                if target and not target.startswith("mailto:") and not (citing.parent / target).exists():
                    problems.append(f"{where}: link target {m['target']} does not exist")
    return problems


def test_every_cited_document_section_and_link_exists():
    problems = broken_references(REPO)
    assert not problems, "references that a clone cannot follow:\n" + "\n".join(problems)


def test_the_check_catches_a_missing_document_a_missing_section_and_a_missing_link(tmp_path):
    gone, method = "gone" + ".md", "method" + ".md"  # spelt in pieces so that the check above does not read them
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / method).write_text("# Method\n\n## 1. Task\n\n## 2. MFM\n")
    (tmp_path / "README.md").write_text(f"see docs/{method} §2 and docs/{method}#2-mfm, not docs/{method} §9\n"
                                        f"nor {gone}; ![figure](docs/figure.png); {'results' + '.md'} is written\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text(f'"""As {method} §1 says; see docs/{method}#3-missing."""\n')
    problems = broken_references(tmp_path)
    assert sorted(problems) == [
        f"README.md:1: docs/{method} has no section 9 (has ['1', '2'])",
        f"README.md:2: {gone} is not in the repository",
        "README.md:2: link target docs/figure.png does not exist",
        f"src/a.py:1: docs/{method} has no heading #3-missing",
    ]
