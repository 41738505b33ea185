"""MkDocs hooks (mkdocs.yml `hooks:`): small rendering fixes.

- Citations: a bare citation key ``[dutting2019optimal]`` in a page (outside code) becomes a
  link to its entry on the references page, so pages cite by key as code and configs do.
- Some docstrings use Sphinx roles (:class:`X`, :func:`~a.b.c`) that Markdown renders as the
  literal role followed by inline code; the role is dropped so only the code remains, and a
  leading ``~`` keeps the last dotted component, as Sphinx shows it.
"""

from __future__ import annotations

import posixpath
import re

from auctionlab.references import BIBLIOGRAPHY

ROLE = re.compile(r":(?:class|func|mod|meth|attr|data|exc|obj):<code>(~?)([^<]+)</code>")


def _code(match: re.Match) -> str:
    short, name = match.group(1), match.group(2)
    return f"<code>{name.rsplit('.', 1)[-1] if short else name}</code>"


#: A bare ``[key]``: not a link's text already, not followed by a link target.
CITATION = re.compile(r"(?<![`\[\w])\[([a-z]+\d{4}[a-z]+)\](?![(\[\]:])")
FENCE = re.compile(r"^\s*(```|~~~)")


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    """Link every bare citation key outside code fences and inline code to the references."""
    here = posixpath.dirname(page.file.src_uri)
    target = posixpath.relpath("references.md", here or ".")

    def link(match: re.Match) -> str:
        key = match.group(1)
        return f"[\\[{key}\\]]({target}#{key})" if key in BIBLIOGRAPHY else match.group(0)

    out, fenced = [], False
    for line in markdown.split("\n"):
        if FENCE.match(line):
            fenced = not fenced
        if fenced or page.file.src_uri == "references.md":
            out.append(line)
            continue
        # Inline code (odd-numbered pieces between backticks) is left alone.
        pieces = line.split("`")
        pieces[::2] = [CITATION.sub(link, piece) for piece in pieces[::2]]
        out.append("`".join(pieces))
    return "\n".join(out)


def on_page_content(html: str, **kwargs) -> str:
    """Replace rendered Sphinx roles by their inline code."""
    return ROLE.sub(_code, html)
