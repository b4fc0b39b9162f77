"""How the commands map their flags onto option keys: a flag given sets its key (over
the ``--config`` file, under ``KEY=VALUE``), and an error naming a key says which flag
sets it."""

from __future__ import annotations

import argparse
import re
from typing import Any, Mapping

_QUOTED = re.compile(r"'([A-Za-z_][\w.]*)'")


def flag_values(args: argparse.Namespace, flags: Mapping[str, str]) -> dict[str, Any]:
    """The option keys the command line set: every key of ``flags`` whose argument (the
    attribute of the same name, dots as underscores) was given."""
    found = {}
    for key in flags:
        value = getattr(args, key.replace(".", "_"), None)
        if value is not None:
            found[key] = tuple(value) if isinstance(value, list) else value
    return found


def name_flags(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with the flag that sets the first quoted key it names beside that key
    (the key the error is about, not the valid keys it may list after):
    "'steps': must be at least 1" -> "'steps' (--steps): must be at least 1"."""
    for match in _QUOTED.finditer(message):
        if match.group(1) in flags:
            return f"{message[: match.end()]} ({flags[match.group(1)]}){message[match.end():]}"
    return message
