"""Command-line entry point `ddim`: one sub-command per module in this package.

Each module `ddim/cli/<name>.py` defines `HELP` (one line), `EXAMPLE` (a copy-paste command line),
`add_arguments(parser)` and `run(args) -> int | None`. Modules are discovered, so adding a command
is adding a file.

What a command says on stderr besides its progress bars: a library warning is one line,
`ddim <cmd>: warning: …` (a note such as "the network was inferred from the weights"); a user
error (a `DdimError`, the filesystem, memory, host or device) is one line, `ddim <cmd>: error: …`,
printed after every progress bar is closed, so it is the last line; exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import pkgutil
import sys
import warnings

from ddim.errors import DdimError
from ddim.progress import close_all


def _command_modules():
    """Import every sub-command module of this package, sorted by name."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return {name: importlib.import_module(f"{__name__}.{name}") for name in names}


def build_parser() -> argparse.ArgumentParser:
    """The `ddim` parser with every discovered sub-command."""
    parser = argparse.ArgumentParser(
        prog="ddim",
        description="Train DDPMs and sample them with DDIM (Song, Meng & Ermon, ICLR 2021).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _command_modules().items():
        help_text = module.HELP.replace("%", "%%")  # argparse formats help strings with %
        sub = subparsers.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=f"example:\n  {module.EXAMPLE}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run, _flags=flag_names(sub))
    return parser


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's destination and its long flag, {"batch": "--batch", "out": "--out"}, those
    of nested sub-commands (`ddim fid ref`) included."""
    names = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                names.update(flag_names(sub))
        long = [name for name in action.option_strings if name.startswith("--")]
        if long and action.dest != "help":
            names[action.dest] = long[0]
    return names


def in_flags(error: DdimError, flags: dict[str, str]) -> str:
    """A library error about an argument as the command line says it: the flag in the argument's
    place, where the message starts with the argument's name, and `--flag N` for each
    `argument=N` it advises. A list flag stands for its singular argument (--etas sets each
    eta)."""
    message, argument = str(error), error.argument
    flag = (flags.get(argument) or flags.get(f"{argument}s")) if argument else None
    if flag is None:
        return message
    head, rest = (flag, message[len(argument) :]) if message.startswith(argument) else ("", message)
    return head + rest.replace(f"{argument}=", f"{flag} ")


MAX_MESSAGE = 500  # characters of an error message shown; a longer one is cut


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run one sub-command; user errors print one line and exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help()
        return 1
    try:
        with one_line_warnings(args.command):
            return args._run(args) or 0
    except KeyboardInterrupt:
        close_all()
        print(f"ddim {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # user errors, the filesystem and memory; the rest re-raised
        message = user_error_message(error, args)
        if message is None:
            raise
        close_all()
        print(f"ddim {args.command}: error: {one_line(message)}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def one_line_warnings(command: str):
    """Within the block, warnings print as `ddim <command>: warning: …` on one line."""
    original = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None):
        return f"ddim {command}: warning: {one_line(str(message))}\n"

    warnings.formatwarning = format_warning
    try:
        yield
    finally:
        warnings.formatwarning = original


def user_error_message(error: BaseException, args: argparse.Namespace) -> str | None:
    """What to tell the user about `error`, or None for a bug (which keeps its traceback)."""
    if isinstance(error, DdimError):
        return in_flags(error, getattr(args, "_flags", {}))
    if isinstance(error, OSError):  # the filesystem: permissions, a full disk, a folder as a file
        where = f" {error.filename!r}" if error.filename else ""
        return f"cannot use{where}: {error.strerror or error}"
    if _is_out_of_memory(error):
        return _out_of_memory_hint(args)
    return None


def one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """A message on one line of at most `limit` characters (whitespace runs become one space)."""
    text = " ".join(message.split())
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


# What torch's CPU allocator says when the host is out of memory (it raises a RuntimeError).
HOST_OUT_OF_MEMORY = (
    "DefaultCPUAllocator: can't allocate memory",  # Linux, macOS
    "DefaultCPUAllocator: not enough memory",  # Windows
)


def _is_out_of_memory(error: BaseException) -> bool:
    """True for host MemoryError, torch's (CUDA/MPS) OutOfMemoryError, and the RuntimeError
    torch raises when the host cannot allocate a tensor."""
    torch = sys.modules.get("torch")
    if isinstance(error, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in HOST_OUT_OF_MEMORY)


def _out_of_memory_hint(args: argparse.Namespace) -> str:
    """One line naming the batch size that did not fit and a flag of this command that makes it
    smaller; at batch 1, or for a command without one, that the batch is not what to change."""
    flags = getattr(args, "_flags", {})
    batch = getattr(args, "batch", None)
    if batch == 1:
        return ("out of memory at batch size 1: one image of this network at this size does not "
                "fit; use a machine (or device) with more memory")  # fmt: skip
    if "batch" in flags:
        if batch:
            return (f"out of memory at batch size {batch}; try a smaller {flags['batch']}, "
                    f"e.g. {max(1, batch // 2)}")  # fmt: skip
        return f"out of memory; try a smaller {flags['batch']}"
    if "set" in flags:
        return "out of memory; try a smaller batch (--set training.batch_size=N)"
    return "out of memory: this command's work does not fit in this machine's memory"
