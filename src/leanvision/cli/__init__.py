"""The `leanvision` command: each subcommand parses its flags and calls one library function.

`main(argv) -> int` returns an exit code (0 ok, 1 failed, 2 bad input, 3 diverged, 130 interrupted: `errors.exit_code`)
so tests can call it directly.
User mistakes print one line, `error: ...`, never a traceback (set LEANVISION_DEBUG=1 to see one). `leanvision` with no
command prints the command list and exits 0.

The package: `parser.py` builds the flags, `commands.py` and `export_bench.py` hold the handlers, `main` (here) runs
one and turns every error into one line and an exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from .. import __version__
from ..cliparse import as_flags, command_list, explain, unknown_command
from ..errors import LeanvisionError, exit_code, first_line
from ..search.cli import cmd_search
from .commands import (
    ERROR_CHARS,
    cmd_datasets,
    cmd_evaluate,
    cmd_models,
    cmd_optimize,
    cmd_predict,
    cmd_serve,
    cmd_study,
    cmd_train,
    optimize_chain,
    resolve_train_config,
    use_flag_names,
)
from .export_bench import cmd_bench, cmd_export
from .parser import build_parser

__all__ = ["main", "build_parser", "optimize_chain", "resolve_train_config", "COMMANDS"]




COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "models": cmd_models,
            "datasets": cmd_datasets, "study": cmd_study, "optimize": cmd_optimize, "serve": cmd_serve,
            "export": cmd_export, "bench": cmd_bench, "search": cmd_search}


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.formatwarning = _one_line_warning  # a CLI user sees "warning: ...", not the source line that warned
    parser = build_parser()
    if not argv:  # bare `leanvision`: the command list, exit 0
        print(command_list(parser))
        return 0
    if argv[0] == "--version":
        print(f"leanvision {__version__}")
        return 0
    if not argv[0].startswith("-") and unknown_command(parser, argv[0]):
        print(f"error: {unknown_command(parser, argv[0])}", file=sys.stderr)
        return 2
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or jsonargparse's own exit
        return int(e.code or 0)
    except (argparse.ArgumentError, ValueError, TypeError) as e:
        command = next((a for a in argv if not a.startswith("-")), None)
        see = f"leanvision {command} --help" if command else "leanvision --help"
        print(f"error: {explain(parser, argv, e)}. See `{see}`.", file=sys.stderr)
        return 2
    command = ns.command
    use_flag_names(lambda text: as_flags(text, parser, command, argv))
    try:
        code = COMMANDS[command](ns[command])
        sys.stdout.flush()  # a reader that closed the pipe (`| head`) shows here, not at interpreter exit
        return code
    except BrokenPipeError:  # like other CLIs: stop quietly (Python docs, "Note on SIGPIPE")
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except LeanvisionError as e:  # the class says the exit code: 2 bad input, 1 failed, 3 diverged, 130 interrupted
        print(f"error: {as_flags(first_line(e, limit=ERROR_CHARS), parser, command, argv)}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt as e:
        print("error: interrupted", file=sys.stderr)
        return exit_code(e)
    except Exception as e:  # noqa: BLE001 - last line of defence: one line, not a traceback
        if os.environ.get("LEANVISION_DEBUG"):
            raise
        print(f"error: {first_line(e, with_type=True, limit=ERROR_CHARS)} (set LEANVISION_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
