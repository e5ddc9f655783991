"""What the `leanvision` parser shows a person: plain help, and parse errors as one line with a reason.

jsonargparse parses; this module only words things. `polish(parser)` gives every (sub)command help that lists each
option's description and, once, its real default (never `type: <function ...>` or `default: null`).
`explain(parser, argv, error)` turns a parse error into one line that names the flag as it was typed, what it expects,
what it received and, for an unknown flag or command, the nearest known one (difflib).
"""

from __future__ import annotations

import argparse
import difflib
import re
import typing

from jsonargparse import ArgumentParser, DefaultHelpFormatter

from .errors import first_line
from .registry import did_you_mean


class HelpFormatter(DefaultHelpFormatter):
    """The option's description and, when it has a meaningful one, its default: `(default: 50)`."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)) or "(default:" in text:
            return text
        default = action.default
        if default is None or default is False or default == argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: {str(default).replace('%', '%%')})"


def subcommands(parser: ArgumentParser) -> dict[str, ArgumentParser]:
    action = getattr(parser, "_subcommands_action", None)
    return dict(action._name_parser_map) if action is not None else {}


def _positional_usage(parser: ArgumentParser) -> str:
    words = []
    for action in parser._actions:
        if action.option_strings or action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        name = str(action.metavar or action.dest).upper()
        words.append({"?": f"[{name}]", "*": f"[{name} ...]", "+": f"{name} [{name} ...]"}.get(action.nargs, name))
    return "".join(f" {w}" for w in words)


def polish(parser: ArgumentParser) -> ArgumentParser:
    """`HelpFormatter`, no abbreviated flags (`--epoch` is not `--epochs`), and usage `leanvision train [options]`
    for the parser and every subcommand parser."""
    parser.formatter_class = HelpFormatter
    parser.allow_abbrev = False
    for name, sub in subcommands(parser).items():
        sub.prog = f"{parser.prog} {name}"
        sub.usage = f"%(prog)s [options]{_positional_usage(sub)}"
        polish(sub)
    return parser


def command_list(parser: ArgumentParser) -> str:
    """`leanvision` with no command: the commands, one a line, and how to get help on one."""
    action = parser._subcommands_action
    helps = {a.dest: a.help or "" for a in action._choices_actions}
    width = max(len(name) for name in action._name_parser_map)
    lines = [f"usage: {parser.prog} COMMAND [options]   ({parser.prog} COMMAND --help for a command's options)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {helps.get(name, '')}" for name in action._name_parser_map]
    return "\n".join(lines)


def unknown_command(parser: ArgumentParser, name: str) -> str | None:
    """One line for a command that does not exist (`leanvision trian` -> did you mean train?), else None."""
    names = list(subcommands(parser))
    if name in names:
        return None
    near = difflib.get_close_matches(name, names, n=1)
    hint = f"Did you mean `{parser.prog} {near[0]}`? " if near else ""
    return f"unknown command {name!r}. {hint}Commands: {', '.join(names)}."


def _options(parser: ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: a for a in parser._actions for flag in a.option_strings}


def _visible_flags(parser: ArgumentParser) -> list[str]:
    return [flag for a in parser._actions if a.help != argparse.SUPPRESS for flag in a.option_strings
            if flag.startswith("--")]


def _scalar_type(action: argparse.Action) -> type | None:
    hint = getattr(action, "_typehint", None) or action.type
    candidates = typing.get_args(hint) or (hint,)
    return next((t for t in (int, float) if t in candidates), None)


def _typed_values(argv: list[str], options: dict[str, argparse.Action]):
    """(flag as typed, value, action) for each `--flag value` / `--flag=value` in argv."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("-") and token != "-":
            flag, eq, value = token.partition("=")
            action = options.get(flag)
            if action is not None and action.nargs != 0 and not eq and i + 1 < len(argv):
                value, i = argv[i + 1], i + 1
            if action is not None and (eq or action.nargs != 0):
                yield flag, value, action
        i += 1


def _check_types(argv: list[str], parser: ArgumentParser) -> str | None:
    for flag, value, action in _typed_values(argv, _options(parser)):
        kind = _scalar_type(action)
        if kind is None:
            continue
        try:
            kind(value)
        except ValueError:
            return f"{flag} expects {'an integer' if kind is int else 'a number'}, received {value!r}"
    return None


def _check_choices(argv: list[str], parser: ArgumentParser) -> str | None:
    for flag, value, action in _typed_values(argv, _options(parser)):
        if action.choices and value not in action.choices:
            hint = did_you_mean(value, action.choices).strip()
            return (f"{flag} expects one of {', '.join(map(str, action.choices))}, received {value!r}"
                    + (f" ({hint[0].lower()}{hint[1:]})" if hint else ""))
    return None


def _unknown_flag(argv: list[str], parser: ArgumentParser) -> str | None:
    options = _options(parser)
    for token in argv:
        if not token.startswith("--"):
            continue
        flag = token.partition("=")[0]
        if flag in options:
            continue
        near = difflib.get_close_matches(flag, _visible_flags(parser), n=1, cutoff=0.6)
        hint = f" (did you mean {near[0]}?)" if near else ""
        return f"unknown option {flag}{hint}"
    return None


def _missing(message: str, parser: ArgumentParser) -> str | None:
    if "arguments are required:" not in message:
        return None
    names = message.split("arguments are required:", 1)[1].strip().rstrip(".").split(",")
    by_dest = {a.dest: a for a in parser._actions}
    words = []
    for name in (n.strip() for n in names if n.strip()):
        action = by_dest.get(name.rsplit(".", 1)[-1])
        if action is None:
            words.append(name)
        elif action.option_strings:
            words.append(next((f for f in action.option_strings if f.startswith("--")), action.option_strings[0]))
        else:
            words.append(action.dest.upper())
    first = by_dest.get(names[0].strip().rsplit(".", 1)[-1])
    what = f" ({first.help})" if first is not None and first.help else ""
    return f"missing required {', '.join(words)}{what}"


def explain(parser: ArgumentParser, argv: list[str], error: BaseException) -> str:
    """One line for a parse error: the flag as typed, what it expects and what it received, or a did-you-mean."""
    command = next((t for t in argv if not t.startswith("-")), None)
    sub = subcommands(parser).get(command) if command else None
    target = sub if sub is not None else parser
    rest = argv[argv.index(command) + 1:] if sub is not None else argv
    text = str(error)
    for reason in (_check_types(rest, target), _check_choices(rest, target), _missing(text, target),
                   _unknown_flag(rest, target) if "unrecognized arguments" in text else None):
        if reason:
            return reason
    return first_line(error, limit=10_000)


def as_flags(message: str, parser: ArgumentParser, command: str, argv: typing.Sequence[str] = ()) -> str:
    """A library error names config fields (`batch_size`, `batch_size=0`); say the command's flags instead
    (`--batch-size`, `--batch-size 0`, `device='cpu'` -> `--device cpu`; an alias such as `--lr` when that is what argv
    has). Errors about a --config file keep its keys. The one place where field names become flags."""
    sub = subcommands(parser).get(command)
    if sub is None or "--config" in message:
        return message
    typed = {token.partition("=")[0] for token in argv}
    for action in sub._actions:
        flag = next((f for f in action.option_strings if f in typed),
                    next((f for f in action.option_strings if f.startswith("--")), None))
        if flag is None or action.dest in ("help", argparse.SUPPRESS):
            continue
        message = message.replace(f"`{action.dest}`", flag)
        # `device='cpu'` -> `--device cpu`: a plain quoted value loses its Python quotes on the command line
        message = re.sub(rf"(?<![\w-]){re.escape(action.dest)}=(?:'([\w.:+-]+)'(?!\w)|(?=\S))",
                         lambda m, flag=flag: f"{flag} {m.group(1) or ''}", message)
    return message


__all__ = ["HelpFormatter", "polish", "subcommands", "command_list", "unknown_command", "explain", "as_flags"]
