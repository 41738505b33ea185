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

from auctionlab.references import link_citations

ROLE = re.compile(r":(?:class|func|mod|meth|attr|data|exc|obj):<code>(~?)([^<]+)</code>")


def _code(match: re.Match) -> str:
    short, name = match.group(1), match.group(2)
    return f"<code>{name.rsplit('.', 1)[-1] if short else name}</code>"


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    """Link every bare citation key outside code to the references page."""
    if page.file.src_uri == "references.md":
        return markdown
    here = posixpath.dirname(page.file.src_uri)
    return link_citations(markdown, posixpath.relpath("references.md", here or "."))


def on_page_content(html: str, **kwargs) -> str:
    """Replace rendered Sphinx roles by their inline code."""
    return ROLE.sub(_code, html)
