"""What every command-line entry point does with an error.

An expected error (a bad config, bad data, a checkpoint that is unreadable or of another
config, an evaluation that cannot run as asked, an output that cannot be written, a run
stopped on non-finite steps) is one line on stderr, ``<prog>: error: <message>``, and
exit status 2, as argparse reports bad arguments. Anything else is a bug and keeps its
traceback. ``EXPECTED_ERRORS`` is the one list of them; a command's own errors subclass
``CommandError``.
"""

from __future__ import annotations

import functools
import re
import sys
from typing import Callable, Mapping, Sequence

from mmssl.cli.options import name_flags
from mmssl.common.atomic import OutputError
from mmssl.train.checkpoint import CheckpointError
from mmssl.config import ConfigError
from mmssl.data.eval_sets import EvaluationError
from mmssl.data.stream import DataError
from mmssl.registry import RegistryError
from mmssl.train.run_log import MetricsFileError
from mmssl.scaffold import ScaffoldError
from mmssl.train.trainer import NonFiniteStepsError
from modalities.base import InvalidSample


class CommandError(Exception):
    """A command cannot do what it was asked (a sub-run failed, a directory named on the
    command line has nothing to read); the message says what and where."""


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    CommandError,
    ConfigError,
    RegistryError,
    DataError,
    InvalidSample,
    CheckpointError,
    EvaluationError,
    OutputError,
    MetricsFileError,
    NonFiniteStepsError,
    ScaffoldError,
)

Main = Callable[[Sequence[str] | None], int]

# torch re-raises a DataLoader worker's exception with the worker's traceback in its message
_WORKER_TRACEBACK = re.compile(r"^Caught \w+ in DataLoader worker process (\d+)\.\s*Original Traceback")
_EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception|InvalidSample): ")


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (a DataLoader worker's error without the
    traceback torch puts in it)."""
    text = str(exc).strip()
    worker = _WORKER_TRACEBACK.match(text)
    if worker:  # its last line is "module.Class: message"
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        text = _EXCEPTION_LINE.sub("", last) + f" (in loader worker {worker.group(1)})"
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__


def print_error(prog: str, message: str) -> None:
    """``<prog>: error: <message>`` on stderr, as argparse words it."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)


def reports_errors(prog: str, flags: Mapping[str, str] | None = None) -> Callable[[Main], Main]:
    """Decorate a command's ``main(argv) -> int``: an ``EXPECTED_ERRORS`` error becomes one
    line on stderr and exit status 2; any other exception propagates with its traceback.
    ``flags`` (option key -> the command's flag): a key the message names gets its flag
    beside it (library errors name keys, the command line knows its flags)."""

    def decorate(main: Main) -> Main:
        @functools.wraps(main)
        def run(argv: Sequence[str] | None = None) -> int:
            try:
                return main(argv)
            except EXPECTED_ERRORS as exc:
                print_error(prog, name_flags(one_line(exc), flags or {}))
                return 2

        return run

    return decorate
