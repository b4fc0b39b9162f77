"""What bad input becomes: placeholder records for what could not be parsed, the UTF-8
check of text read leniently, and ``SkipLog``, the one place where training streams and
evaluation sets count, log or refuse bad samples, so both treat a bad item alike.
"""

from __future__ import annotations

import collections
import logging
import re

log = logging.getLogger(__name__)

# Text files are opened with errors="surrogateescape": a byte that is not UTF-8 becomes
# one lone surrogate, so one bad line or row is found and skipped, not the whole file.
TEXT_ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def undecodable(text: str) -> str | None:
    """Why ``text`` (read with ``TEXT_ENCODING``) is not UTF-8, or None when it is."""
    match = _ESCAPED_BYTE.search(text)
    if match is None:
        return None
    return f"not UTF-8 text: byte 0x{ord(match.group()) - 0xDC00:02x} at character {match.start() + 1}"


class BadRecord:
    """A record that could not be read (a bad JSON line, a CSV row that does not parse);
    it keeps its place in the source and is raised as InvalidSample when drawn."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class SkipLog:
    """Counts and logs the bad samples of one stream or evaluation set, or refuses the
    first one.

    Under ``on_error: skip`` every occurrence counts (an item drawn twice counts twice)
    and every occurrence is logged naming the item: its first at WARNING with the
    reason, later draws of the same item at INFO. Under ``on_error: fail`` the first
    bad sample raises ``error`` naming it.

    Args:
        name: what the samples belong to, for messages ("stream 'image_text'").
        on_error: "skip" or "fail".
        error: the exception class raised under "fail" (DataError, EvaluationError).
    """

    def __init__(self, name: str, on_error: str, error: type[Exception]) -> None:
        if on_error not in ("skip", "fail"):
            raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
        self.name = name
        self.on_error = on_error
        self.error = error
        self.count = 0
        self.reasons: collections.Counter[str] = collections.Counter()
        self.items: collections.Counter[str] = collections.Counter()

    def add(self, where: str, reason: str) -> None:
        """One bad sample at ``where`` (file and row, line or key) for ``reason``."""
        if self.on_error == "fail":
            raise self.error(f"{self.name}: bad sample at {where}: {reason}")
        self.count += 1
        self.reasons[reason] += 1
        self.items[where] += 1
        draws = self.items[where]
        if draws == 1:
            log.warning("%s: skipped bad sample %s: %s (%d skipped so far)", self.name, where, reason, self.count)
        else:
            log.info("%s: skipped bad sample %s again (draw %d; %d skipped so far)", self.name, where, draws, self.count)
