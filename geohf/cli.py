"""The ``geohf`` command: the parser over :mod:`geohf.commands` and the one error handler.

Importing this module (and building the parser) imports no torch, transformers or datasets: every
command imports what it needs when it runs, so ``geohf ... --help`` is quick.

:func:`main` is the one error handler: a :class:`~geohf.errors.UserError` (raised by the commands
and by argument parsing), a missing file or a missing optional extra is one ``error: ...`` line on
stderr and exit code 2; Ctrl-C is exit 130. ``--debug`` (or ``GEOHF_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
import sys

from ._version import __version__
from .commands import COMMANDS
from .commands.command import Parser
from .errors import UserError, extra_message, missing_extra, one_line


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="geohf", description="Image geolocation on the Hugging Face stack.")
    parser.add_argument("--version", action="version", version=f"geohf {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of errors (or GEOHF_DEBUG=1; for train: geohf --debug train ...)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).register_subcommand(sub)
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parsers of ``parser``'s subcommands, by name."""
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _split_debug(argv: list[str], parser: argparse.ArgumentParser) -> tuple[list[str], bool]:
    """``argv`` without geohf's ``--debug`` (only leading ones for a command that forwards its flags to another
    parser, as ``train`` does: its ``--debug`` is transformers')."""
    debug = os.environ.get("GEOHF_DEBUG", "").lower() not in ("", "0", "false", "no")
    rest = list(argv)
    while rest[:1] == ["--debug"]:
        rest.pop(0)
        debug = True
    end = rest.index("--") if "--" in rest else len(rest)
    command = _subcommands(parser).get(rest[0]) if rest else None
    forwards = command is not None and getattr(command.get_default("func"), "forward", None) is not None
    if not forwards and "--debug" in rest[:end]:
        rest = [a for a in rest[:end] if a != "--debug"] + rest[end:]
        debug = True
    return rest, debug


def _run(argv: list[str], parser: argparse.ArgumentParser) -> int:
    args, unknown = parser.parse_known_args(argv)
    forward = args.func.forward
    if forward is None and unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if forward is not None:
        setattr(args, forward, unknown)
    return args.func(args)


def _command(argv: list[str], parser: argparse.ArgumentParser) -> str:
    """``geohf predict``, ``geohf dataset build``...: the command ``argv`` names, for messages."""
    words = [a for a in argv if not a.startswith("-")][:2]
    if words:
        command = _subcommands(parser).get(words[0])
        if command is None or not any(isinstance(a, argparse._SubParsersAction) for a in command._actions):
            words = words[:1]
    return " ".join(["geohf", *words])


DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
# how writers that are not Python's (Arrow, safetensors) report the same errnos
DISK_FULL_TEXT = re.compile(r"(os error|errno) ?(28|27|122)\b|No space left on device|File too large", re.I)


def disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) is a write refused for want of space: ENOSPC, EFBIG, EDQUOT."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            return True
        if DISK_FULL_TEXT.search(str(err)):
            return True
        err = err.__cause__ or err.__context__
    return False


def main(argv: list[str] | None = None) -> int:
    """Run ``geohf ARGV``; user errors are one ``error:`` line and exit code 2 (``--debug``: traceback)."""
    parser = build_parser()
    argv, debug = _split_debug(list(sys.argv[1:] if argv is None else argv), parser)
    try:
        return _run(argv, parser)
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return 130
    except (UserError, FileNotFoundError, ImportError) as err:
        extra = missing_extra(err)
        if debug or (isinstance(err, ImportError) and extra is None):
            raise  # a broken install or a bug: the traceback is the useful report
        if extra is not None:
            message = extra_message(_command(argv, parser), *extra)
        elif isinstance(err, FileNotFoundError) and err.filename is not None:
            message = f"{err.filename}: {err.strerror or 'no such file or directory'}"
        else:
            message = one_line(err)
        print(f"error: {message}", file=sys.stderr)
        return 2
    except Exception as err:
        if debug or not disk_full(err):
            raise
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        what = getattr(err, "strerror", None) or one_line(err)
        print(f"\nerror: {where}{what}: the disk is full (or a file size limit was hit); nothing half-written "
              "is kept: free space and run the same command again", file=sys.stderr)  # fmt: skip
        return 2


if __name__ == "__main__":
    sys.exit(main())
