"""Write one runner's section of CONFORMANCE.md without touching the others."""

from __future__ import annotations

from pathlib import Path

__all__ = ["replace_section"]

_TITLE = "# Conformance\n"


def replace_section(path: Path, key: str, body: str) -> None:
    """Put ``body`` between ``<!-- key:start -->`` and ``<!-- key:end -->`` in ``path``.

    The section is appended when absent; the file is created with a title when missing. The new text
    is written to a temporary file and moved into place.
    """
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    text = path.read_text() if path.exists() else _TITLE
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
