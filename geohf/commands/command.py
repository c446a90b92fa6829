"""A subcommand's binding of its parsed arguments (a dataclass) to the function running it."""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

from ..errors import UserError
from ..files import exclusive_output

A = TypeVar("A")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are :class:`UserError` (one line, exit 2 from ``geohf.cli.main``)."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


@dataclass(frozen=True)
class Command(Generic[A]):
    """``parser.set_defaults(func=Command(Arguments, run))``: ``args.func(namespace)`` runs the command.

    ``forward`` names the field of ``arguments`` that receives the flags the parser does not know (``geohf
    train`` hands them to its HfArgumentParser); without it, unknown flags are a usage error.
    """

    arguments: type[A]
    run: Callable[[A], int]
    forward: str | None = None

    def parse(self, namespace: argparse.Namespace) -> A:
        """The arguments dataclass of a parsed namespace (its fields are the parser's ``dest`` names)."""
        return self.arguments(**{f.name: getattr(namespace, f.name) for f in fields(self.arguments) if f.init})

    def __call__(self, namespace: argparse.Namespace) -> int:
        return self.run(self.parse(namespace))


def set_command(parser: argparse.ArgumentParser, arguments: type[A], run: Callable[[A], int], **kwargs: Any) -> None:
    """Make ``parser`` run ``run(arguments(...))`` (see :class:`Command`)."""
    parser.set_defaults(func=Command(arguments, run, **kwargs))


def exclusive(output: str | Callable[[Any], str | os.PathLike | None], what: str):
    """Decorate a command to run holding the writer's lock of its output (:func:`geohf.files.exclusive_output`):
    a second process writing the same output at once is refused in one line. ``output``: the arguments' field
    naming it, or a function of the arguments; ``None`` and ``"-"`` (stdout) take no lock."""
    where = output if callable(output) else (lambda args: getattr(args, output))

    def decorate(run: Callable[[A], int]) -> Callable[[A], int]:
        @functools.wraps(run)
        def locked(args: A) -> int:
            path = where(args)
            if path is None or str(path) == "-":
                return run(args)
            with exclusive_output(os.path.expanduser(path), what):
                return run(args)

        return locked

    return decorate
