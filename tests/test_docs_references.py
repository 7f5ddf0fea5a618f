"""Every section-sign reference in the repository resolves to a heading of docs/original.md.

Code, tests, tools, gin files and docs cite the original code's behaviour as
"<section sign>x.y" or "spec <section sign>x.y"; both mean the heading numbered x.y in
docs/original.md (headings `## 5. Title`, `### 5.6 Title`, up to four '#'). The one
exception is a Markdown link whose text holds the sign and whose target is an anchor,
e.g. porting.md's links to its own sections: those must find their heading in the page
they point to instead.

This file spells the section sign as an escape, so that its synthetic examples are not
themselves scanned as references.
"""

import os
import re

import pytest

SECTION = "\N{SECTION SIGN}"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORIGINAL = os.path.join(REPO, "docs", "original.md")
SCANNED = ("nst", "tests", "tools", "docs", "README.md")  # nst/ holds recipes/
SKIPPED_DIRS = {"__pycache__", ".git", ".pytest_cache"}
TEXT_SUFFIXES = (".py", ".md", ".gin", ".txt", ".cfg", ".toml", ".ini", ".json", ".sh")

REFERENCE = re.compile(SECTION + r"\s?(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^(#{2,4})\s+(\d+(?:\.\d+)*)\.?\s+\S", re.MULTILINE)
ANY_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.DOTALL)
SECTION_LINK = re.compile(r"\[([^\]\n]*" + SECTION + r"[^\]\n]*)\]\(([^)\s]*#[^)\s]*)\)")


def _blank(text, pattern):
    """`text` with every match of `pattern` replaced by spaces (newlines kept), so that
    positions stay valid."""
    return pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def headings(markdown):
    """{section number: line} of the numbered headings `#{2,4} <number>[.] <title>`,
    ignoring fenced code. Raises ValueError if a number has two headings."""
    found = {}
    for match in HEADING.finditer(_blank(markdown, FENCE)):
        number = match.group(2)
        if number in found:
            raise ValueError(f"Section {number} has two headings")
        found[number] = markdown.count("\n", 0, match.start()) + 1
    return found


def slug(title):
    """GitHub's anchor for a heading title: lower case, punctuation dropped, spaces to '-'."""
    title = re.sub(r"[`*_]{2,}|(?<!\w)[*_]|[*_](?!\w)", "", title.strip())  # emphasis marks
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # links keep their text
    title = title.lower().replace("`", "")
    title = re.sub(r"[^\w\- ]", "", title)
    return title.replace(" ", "-")


def anchors(markdown):
    """Every heading anchor of a Markdown page (duplicates get -1, -2, ... as on GitHub)."""
    seen, out = {}, set()
    for match in ANY_HEADING.finditer(_blank(markdown, FENCE)):
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def references(text, markdown=False):
    """(section numbers cited, [(link target, section text)] of section-sign links).

    In Markdown, a link `[<sign>x](target#anchor)` outside code is a link, not a citation
    of docs/original.md; everything else with the sign is a citation."""
    links = []
    if markdown:
        prose = _blank(_blank(text, FENCE), CODE_SPAN)
        spans = []
        for match in SECTION_LINK.finditer(prose):
            links.append((match.group(2), match.group(1)))
            spans.append(match.span())
        chars = list(text)
        for start, end in spans:
            chars[start:end] = " " * (end - start)
        text = "".join(chars)
    return [m.group(1) for m in REFERENCE.finditer(text)], links


def missing_sections(cited, available):
    return sorted(set(cited) - set(available), key=lambda n: [int(p) for p in n.split(".")])


def _scanned_files():
    for entry in SCANNED:
        path = os.path.join(REPO, entry)
        if os.path.isfile(path):
            yield path
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("."))
            for name in sorted(files):
                if name.endswith(TEXT_SUFFIXES):
                    yield os.path.join(root, name)


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _scan():
    """({number: [file:line, ...]} of citations, [(file, target, text)] of links)."""
    cited, links = {}, []
    for path in _scanned_files():
        try:
            text = _read(path)
        except UnicodeDecodeError:
            continue
        if SECTION not in text:
            continue
        rel = os.path.relpath(path, REPO)
        numbers, file_links = references(text, markdown=path.endswith(".md"))
        for number in numbers:
            cited.setdefault(number, []).append(rel)
        links += [(path, target, label) for target, label in file_links]
    return cited, links


# --------------------------------------------------------------------------- self-checks


def test_parser_on_synthetic_text():
    doc = ("# Title\n\n## 1. One\n\n### 1.1 First\n\n#### 1.1.1. Deep\n\n## 2. Two\n"
           "```\n## 9. inside a fence\n```\n###No space 3\n")
    assert headings(doc) == {"1": 3, "1.1": 5, "1.1.1": 7, "2": 9}
    text = (f"see spec {SECTION}1.1, {SECTION} 2 and {SECTION}2.5-{SECTION}3; "
            f"also {SECTION}1.1.1 step 6. And {SECTION}9.")
    numbers, links = references(text)
    assert numbers == ["1.1", "2", "2.5", "3", "1.1.1", "9"]
    assert links == []
    # The check must catch what has no heading: 2.5, 3 and 9 here.
    assert missing_sections(numbers, headings(doc)) == ["2.5", "3", "9"]
    with pytest.raises(ValueError, match="two headings"):
        headings("## 4. A\n## 4 B\n")


def test_links_are_not_citations():
    text = (f"steps ([{SECTION}2.4](#24-filter_unlabelpy--nst-filter-unlabel)), "
            f"[{SECTION}4](other.md#4-checkpoints) and spec {SECTION}11; "
            f"in code `[{SECTION}7](#x)` stays a citation.")
    numbers, links = references(text, markdown=True)
    assert numbers == ["11", "7"]
    assert links == [("#24-filter_unlabelpy--nst-filter-unlabel", f"{SECTION}2.4"),
                     ("other.md#4-checkpoints", f"{SECTION}4")]
    # Outside Markdown a link is just text: both numbers are citations.
    assert references(text)[0] == ["2.4", "4", "11", "7"]


def test_slugs_match_github():
    assert slug("2.4 `filter_unlabel.py` → `nst-filter-unlabel`") == \
        "24-filter_unlabelpy--nst-filter-unlabel"
    assert slug("5.6 Learning-rate schedule") == "56-learning-rate-schedule"
    assert slug("5. Quirks kept on purpose") == "5-quirks-kept-on-purpose"
    assert anchors("## A\n## A\n") == {"a", "a-1"}


# --------------------------------------------------------------------------- the repository


def test_original_md_numbering():
    """docs/original.md has unique, gap-free numbered headings: each x.y has a section x,
    and x.1 ... x.n (and 1 ... N) have no holes."""
    numbers = headings(_read(ORIGINAL))
    assert numbers, "docs/original.md has no numbered headings"
    children = {}
    for number in numbers:
        parent, _, last = number.rpartition(".")
        assert not parent or parent in numbers, f"{number} has no parent section {parent}"
        children.setdefault(parent, []).append(int(last))
    for parent, indices in children.items():
        assert sorted(indices) == list(range(1, len(indices) + 1)), (
            f"docs/original.md: the sections under {parent or 'the top level'} are "
            f"numbered {sorted(indices)}, with holes")


def test_every_cited_section_has_a_heading():
    available = headings(_read(ORIGINAL))
    cited, _ = _scan()
    assert cited, "no section references found: is the scan looking in the right place?"
    missing = missing_sections(cited, available)
    assert not missing, "Cited sections without a heading in docs/original.md: " + "; ".join(
        f"{SECTION}{n} (in {', '.join(sorted(set(cited[n])))})" for n in missing)


def test_section_links_find_their_heading():
    _, links = _scan()
    broken = []
    for path, target, label in links:
        page, _, anchor = target.partition("#")
        page_path = os.path.normpath(os.path.join(os.path.dirname(path), page)) if page else path
        if not os.path.isfile(page_path) or anchor not in anchors(_read(page_path)):
            broken.append(f"{os.path.relpath(path, REPO)}: [{label}]({target})")
    assert not broken, "Links to sections that do not exist: " + "; ".join(broken)
