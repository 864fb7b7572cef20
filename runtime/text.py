"""Text from tasks and callers, made safe to show on a terminal.

Records hold what tasks and their callers wrote: an error message, a progress message, a dead
letter's reason. Kept as written, such text may carry control characters that a terminal acts
on rather than shows (retitle the window, clear the screen, recolour or rewrite what follows),
or bidirectional overrides that show text in an order other than its own. ``printable`` shows
each of them as an escape instead, so what an operator reads is what the record holds.
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL and the C1 controls (0x9b is a whole CSI on its own), and
# the bidirectional marks, embeddings, overrides and isolates.
_UNSHOWABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, one_line: bool = False) -> str:
    """``text`` with every character a terminal would act on shown as its escape (``\\x1b``,
    ``\\u202e``); with ``one_line``, newlines too (as ``\\n``), for a field of a one-line row."""
    if one_line:
        text = text.replace("\n", "\\n")
    return _UNSHOWABLE.sub(_escape, text)


# Select Graphic Rendition: the colours Ray puts in the errors it formats (``ray::f()`` in cyan).
_COLOURS = re.compile("\x1b\\[[0-9;]*m")


def without_colours(text: str) -> str:
    """``text`` without the terminal colour codes of a message formatted for a terminal (Ray's
    errors): a record keeps the words, not how one terminal showed them."""
    return _COLOURS.sub("", text)
