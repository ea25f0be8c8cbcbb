"""The documentation: every relative link resolves, and every Python example runs.

Pages checked: README.md, docs/*.md and export/README.md. A link
``[text](target)`` that is not http(s) or mailto must name a file that exists
relative to the linking page; with ``#anchor``, a heading of the target page
must produce that anchor (GitHub's rule: lowercase, characters other than
letters, digits, spaces, hyphens and underscores dropped, spaces to hyphens,
``-1``, ``-2``... for repeated headings).

Every fenced block opened with ```python in README.md and docs/*.md is run in
a fresh namespace inside a temporary working directory, unless its first line
is the comment ``# docs: no-run`` (for examples that need real CIFAR-10 or a
long training). Tracebacks point at the page's own line numbers.
"""

import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NO_RUN = "# docs: no-run"


def doc_pages():
    """The pages whose links are checked."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
             REPO / "export" / "README.md"]
    return [page for page in pages if page.is_file()]


def example_pages():
    """The pages whose Python examples are run."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def fenced_blocks(text):
    """``(info, first_line_number, source)`` of every fenced code block (1-based lines)."""
    blocks, info, start, lines = [], None, None, []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if info is None:
            if stripped.startswith("```"):
                info, start, lines = stripped[3:].strip(), number + 1, []
                indent = len(line) - len(line.lstrip())
        elif stripped.startswith("```") and not stripped.strip("`"):
            blocks.append((info, start, "\n".join(lines) + "\n"))
            info = None
        else:
            lines.append(line[indent:] if line[:indent].isspace() else line)
    return blocks


def prose(text, code_spans=False):
    """``text`` with fenced blocks blanked (line count kept) and, unless
    ``code_spans``, inline code spans emptied."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            out.append("")
        else:
            out.append("" if fenced else line)
    text = "\n".join(out)
    return text if code_spans else re.sub(r"`[^`\n]*`", "``", text)


def slug(heading):
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page):
    """Every anchor the headings of ``page`` produce."""
    seen, result = {}, set()
    for line in prose(page.read_text(encoding="utf-8"), code_spans=True).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")


def broken_links(page):
    """``"PAGE:LINE: target (why)"`` for each relative link of ``page`` that does not resolve."""
    # Inline code may hold brackets: it is emptied (a link text that is code stays a link).
    cleaned = prose(page.read_text(encoding="utf-8"))
    problems = []
    for match in LINK.finditer(cleaned):
        target = match.group(1)
        if not target or re.match(r"(https?|mailto|ftp):", target, re.IGNORECASE):
            continue
        line = cleaned.count("\n", 0, match.start()) + 1
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(REPO) if page.is_relative_to(REPO) else page}:{line}"
        if not dest.exists():
            problems.append(f"{where}: {target} (no such file)")
        elif anchor:
            if dest.is_dir() or dest.suffix.lower() not in (".md", ".markdown"):
                problems.append(f"{where}: {target} (an anchor into a file that is not Markdown)")
            elif anchor not in anchors(dest):
                problems.append(f"{where}: {target} (no heading gives #{anchor} in {dest.name})")
    return problems


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    assert broken_links(page) == []


def test_the_link_check_finds_broken_links(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section, with `code`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n"
        "[fine](other.md) [fine too](other.md#a-section-with-code) [here](#title)\n"
        "[web](https://example.org/x) `[not a link](nowhere.md)`\n"
        "[gone](missing.md)\n"
        "[bad anchor](other.md#no-such-section)\n"
        "[bad local anchor](#nothing)\n"
        "```bash\n[in a code block](also-missing.md)\n```\n")
    problems = broken_links(page)
    assert len(problems) == 3, problems
    assert "missing.md (no such file)" in problems[0]
    assert "#no-such-section" in problems[1]
    assert "#nothing" in problems[2]


def test_no_developer_machine_paths():
    """No page names a folder of someone's machine (use relative paths such as runs/...)."""
    found = []
    for page in doc_pages():
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
            for path in re.findall(r"(?<![\w.])/(?:work|home|tmp|Users|root)/\S*", line):
                found.append(f"{page.relative_to(REPO)}:{number}: {path}")
    assert found == []


def python_examples():
    params = []
    for page in example_pages():
        blocks = [b for b in fenced_blocks(page.read_text(encoding="utf-8"))
                  if b[0].split()[:1] == ["python"]]
        for index, (_, start, source) in enumerate(blocks, start=1):
            rel = str(page.relative_to(REPO))
            params.append(pytest.param(page, start, source, id=f"{rel}-python{index}-line{start}"))
    return params


@pytest.mark.parametrize("page, start, source", python_examples())
def test_python_example_runs(page, start, source, tmp_path, monkeypatch):
    first = source.lstrip().splitlines()[0] if source.strip() else ""
    if first.startswith(NO_RUN):
        pytest.skip(f"{page.relative_to(REPO)}:{start}: marked {NO_RUN}")
    monkeypatch.chdir(tmp_path)
    # Padding keeps the page's line numbers in tracebacks.
    code = compile("\n" * (start - 1) + source, str(page), "exec")
    exec(code, {"__name__": "__docs_example__"})  # noqa: S102 (the docs' own examples)


def documented_names():
    """``(page, name)`` for every dotted ``gacd_tf.X...`` name the pages mention.

    The "Where things moved" section of docs/api.md names the old locations on
    purpose and is left out.
    """
    found = []
    for page in example_pages():
        text = page.read_text(encoding="utf-8")
        if page.name == "api.md":
            text = re.sub(r"\n## Where things moved\n.*?(?=\n## )", "\n", text, flags=re.S)
        for name in sorted(set(re.findall(r"gacd_tf(?:\.[A-Za-z_]\w*)+", text))):
            found.append((page, name))
    return found


def test_documented_names_exist():
    """Every ``gacd_tf.X.Y`` the pages name imports (a module) or is an attribute."""
    import importlib

    missing = []
    for page, name in documented_names():
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                missing.append(f"{page.relative_to(REPO)}: {name}")
            break
    assert missing == []


def test_every_page_is_checked():
    """The docs folder exists and every page the README maps is linked from it."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert pages, "docs/ has no pages"
    unlinked = [name for name in pages if f"(docs/{name}" not in readme]
    assert unlinked == []
