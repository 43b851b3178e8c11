"""The documentation's links resolve: README.md, docs/*.md and bench/RESULTS.md.

Every relative link ``[text](target)`` must name a file or folder of the repository and,
where it carries ``#anchor``, a heading of that file, with GitHub's anchor rules (lowercase;
punctuation other than ``-`` and ``_`` dropped; spaces to ``-``; a repeated heading gets
``-1``, ``-2``, ...). Every ``docs/<page>.md#anchor`` cited in the code, configs, tests and
benchmarks must resolve the same way. External (``http(s)://``, ``mailto:``) links are not
checked. Also: ``.ci/run`` runs the README's test command as the README writes it (the two
copies of that line must not drift apart). Pure text processing: no network, no JAX.
"""

from __future__ import annotations

import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCUMENTS = ("README.md", "docs/*.md", "bench/RESULTS.md")
CODE_FOLDERS = ("cmd_jax", "configs", "data_prep", "tests", "bench")
CODE_FILES = ("launch.py",)

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target) or ![alt](target), target optionally followed by a "title".
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
# A page of docs/ cited with an anchor in code: docs/references.md#cmd-step-order
CODE_CITATION = re.compile(r"docs/([A-Za-z0-9_.-]+\.md)#([A-Za-z0-9_-]+)")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")     # http:, https:, mailto:, ...


def github_slug(heading: str) -> str:
  """The anchor GitHub gives a heading's text (before the duplicate suffix)."""
  text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)     # a link counts as its text
  text = re.sub(r"<[^>]+>", "", text)                            # inline HTML tags
  text = text.strip().lower()
  text = re.sub(r"[^\w\- ]", "", text)                           # punctuation but - and _
  return text.replace(" ", "-")


def outside_code(lines: list[str]):
  """(line number, line) of the lines outside fenced code blocks."""
  fenced = None
  for number, line in enumerate(lines, start=1):
    match = FENCE.match(line)
    if match:
      if fenced is None:
        fenced = match.group(1)
      elif match.group(1) == fenced:
        fenced = None
      continue
    if fenced is None:
      yield number, line


def anchors(path: pathlib.Path) -> set[str]:
  """Every anchor GitHub generates for the headings of a markdown file."""
  seen: dict[str, int] = {}
  result = set()
  for _, line in outside_code(path.read_text(encoding="utf-8").splitlines()):
    match = HEADING.match(line)
    if not match:
      continue
    slug = github_slug(match.group(2))
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    result.add(slug if count == 0 else f"{slug}-{count}")
  return result


def links(path: pathlib.Path):
  """(line number, target) of every link in a markdown file, code spans and blocks excluded."""
  for number, line in outside_code(path.read_text(encoding="utf-8").splitlines()):
    definition = REFERENCE_DEFINITION.match(line)
    if definition:
      yield number, definition.group(1)
      continue
    for match in LINK.finditer(INLINE_CODE.sub("", line)):
      yield number, match.group(1)


def target_problem(source: pathlib.Path, target: str, repo: pathlib.Path) -> str | None:
  """What is missing for ``target``, linked from ``source``; None when it resolves."""
  if not target or EXTERNAL.match(target):
    return None
  location, _, anchor = target.partition("#")
  resolved = (source.parent / location).resolve() if location else source.resolve()
  try:
    resolved.relative_to(repo)
  except ValueError:
    return f"{location} leads outside the repository"
  if not resolved.exists():
    return f"no file or folder {resolved.relative_to(repo)}"
  if anchor:
    if resolved.is_dir() or resolved.suffix.lower() != ".md":
      return f"#{anchor} points into {resolved.relative_to(repo)}, which is not a markdown file"
    if anchor not in anchors(resolved):
      return f"no heading with anchor #{anchor} in {resolved.relative_to(repo)}"
  return None


def link_problems(documents: list[pathlib.Path], repo: pathlib.Path) -> list[str]:
  problems = []
  for document in documents:
    for number, target in links(document):
      problem = target_problem(document, target, repo)
      if problem:
        problems.append(f"{document.relative_to(repo)}:{number}: link ({target}): {problem}")
  return problems


def citation_problems(files: list[pathlib.Path], repo: pathlib.Path) -> list[str]:
  problems = []
  for path in files:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
      for match in CODE_CITATION.finditer(line):
        target = f"{match.group(1)}#{match.group(2)}"
        problem = target_problem(repo / "docs" / "_", target, repo)
        if problem:
          problems.append(f"{path.relative_to(repo)}:{number}: cites docs/{target}: {problem}")
  return problems


def repository_documents() -> list[pathlib.Path]:
  return sorted(path for pattern in DOCUMENTS for path in REPO.glob(pattern))


def repository_code() -> list[pathlib.Path]:
  files = [REPO / name for name in CODE_FILES]
  for folder in CODE_FOLDERS:
    files += [path for path in (REPO / folder).rglob("*") if path.suffix in (".py", ".sh", ".md")]
  this = pathlib.Path(__file__).resolve()
  return sorted(path for path in files if path.is_file() and path.resolve() != this)


# --- the checker itself, on hand-made cases ---

@pytest.mark.parametrize("heading, slug", [
    # Worked by hand from GitHub's rules; the first two are anchors docs/references.md's table
    # of contents already used.
    ("NTU RGB+D 60 and 120", "ntu-rgbd-60-and-120"),
    ("CMD pre-normalization", "cmd-pre-normalization"),
    ("HiCLR's 50-frame clips (`--variant frame50`)", "hiclrs-50-frame-clips---variant-frame50"),
    ("1. Training step, reduced CPU size", "1-training-step-reduced-cpu-size"),
    ("Kills, damaged files and mixed runs", "kills-damaged-files-and-mixed-runs"),
    ("snake_case and [a link](x.md)", "snake_case-and-a-link"),
])
def test_github_slug(heading, slug):
  assert github_slug(heading) == slug


def test_checker_reports_broken_links_and_anchors(tmp_path):
  (tmp_path / "docs").mkdir()
  (tmp_path / "folder").mkdir()
  (tmp_path / "docs" / "page.md").write_text(
      "# Page\n\n## Same\n\n## Same\n\n```\n# not a heading\n```\n", encoding="utf-8")
  (tmp_path / "README.md").write_text(
      "[ok](docs/page.md) [ok](docs/page.md#same-1) [ok](folder) [ok](#top) [ok](https://x.org/y)\n"
      "`[in code](missing.md)`\n"
      "[file](docs/missing.md) [anchor](docs/page.md#same-2) [code block](docs/page.md#not-a-heading)\n"
      "[outside](../elsewhere.md)\n\n# Top\n", encoding="utf-8")
  problems = link_problems([tmp_path / "README.md", tmp_path / "docs" / "page.md"], tmp_path.resolve())
  assert problems == [
      "README.md:3: link (docs/missing.md): no file or folder docs/missing.md",
      "README.md:3: link (docs/page.md#same-2): no heading with anchor #same-2 in docs/page.md",
      "README.md:3: link (docs/page.md#not-a-heading): no heading with anchor #not-a-heading in docs/page.md",
      "README.md:4: link (../elsewhere.md): ../elsewhere.md leads outside the repository",
  ], problems
  code = tmp_path / "module.py"
  code.write_text('"""Follows docs/page.md#same and docs/' 'page.md#gone."""\n', encoding="utf-8")
  assert citation_problems([code], tmp_path.resolve()) == [
      "module.py:1: cites docs/page.md#gone: no heading with anchor #gone in docs/page.md"]


# --- the repository ---

def test_documents_exist():
  names = {str(path.relative_to(REPO)) for path in repository_documents()}
  assert {"README.md", "bench/RESULTS.md", "docs/references.md"} <= names, names


def test_every_relative_link_resolves():
  problems = link_problems(repository_documents(), REPO)
  assert not problems, "broken links in the docs:\n" + "\n".join(problems)


def test_every_docs_anchor_cited_in_code_resolves():
  files = repository_code()
  assert any(CODE_CITATION.search(path.read_text(encoding="utf-8")) for path in files)
  problems = citation_problems(files, REPO)
  assert not problems, "docs anchors cited in code that do not resolve:\n" + "\n".join(problems)


TEST_COMMAND_START = "python -m pip install -r requirements.txt -r tests/requirements.txt"


def test_ci_runs_the_readme_test_command():
  readme = [line.strip() for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines()]
  commands = [line for line in readme if line.startswith(TEST_COMMAND_START)]
  assert len(commands) == 1, f"README.md: expected one test command starting {TEST_COMMAND_START!r}, got {commands}"
  ci = [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
  assert commands[0] in ci, f".ci/run does not run the README's test command {commands[0]!r}"
