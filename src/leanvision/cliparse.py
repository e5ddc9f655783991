"""What the `leanvision` parser shows a person: plain help, and parse errors as one line with a reason.

jsonargparse parses; this module only words things. `polish(parser)` gives every (sub)command help that lists each
option's description and, once, its real default (never `type: <function ...>` or `default: null`).
`add_dataclass_flags(parser, Config)` makes one flag per field of a command's config dataclass, its help the field's
trailing `# comment`, so every command's options and defaults are written once, in its config.
`explain(parser, argv, error)` turns a parse error into one line that names the flag as it was typed, what it expects,
what it received and, for an unknown flag or command, the nearest known one (difflib).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import io
import re
import tokenize
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

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


def field_help(cls: type) -> dict[str, str]:
    """The trailing `# comment` of each dataclass field: help text declared once, next to the default."""
    helps: dict[str, str] = {}
    tokens = tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline)
    current = None
    for tok in tokens:
        if tok.type == tokenize.NAME and tok.start[1] == 4 and current is None:
            current = tok.string
        elif tok.type == tokenize.COMMENT and current:
            helps[current] = tok.string.lstrip("# ").strip()
        elif tok.type in (tokenize.NEWLINE, tokenize.NL):
            current = None
    return helps


def _options_of(hint: Any) -> tuple[Any, ...]:
    """The non-None members of `X | None` / `Optional[X]`, or (hint,)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(t for t in typing.get_args(hint) if t is not type(None))
    return (hint,)


def _scalar(kind: Any) -> type:
    return next((t for t in (bool, int, float, str) if kind is t), str)


def comma_list(kind: type, flag: str) -> Callable[[Any], tuple]:
    """An argparse type: `"1,256"` -> (1, 256), each value cast to `kind` (jsonargparse re-checks parsed values, so a
    tuple passes through)."""
    noun = {int: "integers", float: "numbers"}.get(kind, "values")

    def parse(text: Any) -> tuple:
        if isinstance(text, (tuple, list)):
            return tuple(text)
        try:
            values = tuple(kind(v.strip()) for v in str(text).split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects comma-separated {noun}, received {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"{flag} expects at least one value, received {text!r}")
        if kind is int and min(values) < 1:  # counts and sizes
            raise argparse.ArgumentTypeError(f"{flag} expects positive integers, received {text!r} (e.g. 1,256)")
        return values

    parse.__name__ = f"comma-separated {noun}"
    return parse


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def add_dataclass_flags(parser: ArgumentParser, cls: type, skip: Sequence[str] = (),
                        aliases: dict[str, list[str]] | None = None, hidden: dict[str, list[str]] | None = None,
                        repeat: Sequence[str] = (), required: Sequence[str] = (),
                        choices: dict[str, Sequence[Any]] | None = None, negatable: bool = False) -> None:
    """One flag per field of the dataclass `cls` (`batch_size` -> `--batch-size`), its help the field's `# comment`.

    Every flag's parsed default is None, so the dataclass default applies (`config_from_flags`) and a config file or
    recipe can sit between the two; the help shows the dataclass default. Field types: bool -> `--x` / `--no-x`;
    int/float/str (or `X | None`) -> typed; `Literal[...]` -> choices; `tuple[T, ...]` -> comma-separated
    (`--batch-sizes 1,256`), or one value per repeated flag for a field named in `repeat`. `aliases` adds shown
    names (`{"learning_rate": ["--lr"]}`), `hidden` accepted-but-unlisted ones (an old spelling).
    """
    helps = field_help(cls)
    hints = typing.get_type_hints(cls)
    aliases, hidden, choices = aliases or {}, hidden or {}, choices or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        name = f"--{f.name.replace('_', '-')}"
        flags = [*aliases.get(f.name, [])] if f.name in repeat else [name, *aliases.get(f.name, [])]
        default = None
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        shown = not any(default is v for v in (None, False, True)) and default != () and f.name not in repeat
        text = helps.get(f.name, "").replace("; None = ", "; default: ")
        text += f" (default: {_shown(default).replace('%', '%%')})" if shown else ""
        options = _options_of(hints[f.name])
        kind = options[0]
        extra: dict[str, Any] = {"required": True} if f.name in required else {"default": None}
        if kind is bool:  # on by default: --no-x is the one shown; a --no-x for an off flag only where asked
            off = f"--no-{f.name.replace('_', '-')}"
            parser.add_argument(*flags, dest=f.name, action="store_const", const=True,
                                help=argparse.SUPPRESS if default else text, **extra)
            if default or negatable:
                parser.add_argument(off, dest=f.name, action="store_const", const=False, default=None,
                                    help=f"turn this off: {text}" if default else f"turn {flags[0]} off (e.g. when "
                                                                                   "--config or a recipe turns it on)")
        elif typing.get_origin(kind) is typing.Literal or f.name in choices:
            literal = typing.get_origin(kind) is typing.Literal
            allowed = list(typing.get_args(kind)) if literal else list(choices[f.name])
            parser.add_argument(*flags, dest=f.name, type=type(allowed[0]), choices=allowed, help=text, **extra)
        elif typing.get_origin(kind) in (tuple, list):
            item = _scalar(typing.get_args(kind)[0])
            if f.name in repeat:
                parser.add_argument(*flags, dest=f.name, type=item, action="append", metavar="SPEC", help=text, **extra)
            else:
                parser.add_argument(*flags, dest=f.name, type=comma_list(item, name), metavar="A,B,...", help=text,
                                    **extra)
        else:
            parser.add_argument(*flags, dest=f.name, type=_scalar(kind), help=text, **extra)
        for old in hidden.get(f.name, []):
            parser.add_argument(old, dest=f.name, type=parser._option_string_actions[flags[0]].type,
                                default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def flag_values(ns: Any, cls: type) -> dict[str, Any]:
    """The fields of `cls` given on the command line (None = not given), as {field: value}; tuples stay tuples."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(ns, f.name, None)
        if value is not None:
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def config_from_flags(ns: Any, cls: type, **values: Any) -> Any:
    """`cls` built from the flags given (`values` first, for what a command fills in itself); the rest keeps its
    dataclass default."""
    return cls(**{**values, **flag_values(ns, cls)})


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
    line = first_line(error, limit=10_000)
    own = re.match(r"argument [^:]+: (--[\w-]+ expects .*)", line)  # a flag type's own message names the flag
    return own.group(1) if own else line


def as_flags(message: str, parser: ArgumentParser, command: str, argv: typing.Sequence[str] = ()) -> str:
    """A library error names config fields (`batch_size`, `batch_size=0`); say the command's flags instead
    (`--batch-size`, `--batch-size 0`, `device='cpu'` -> `--device cpu`; an alias such as `--lr` when that is what argv
    has). Errors about a --config file keep its keys. The one place where field names become flags."""
    sub = subcommands(parser).get(command)
    if sub is None or "--config" in message or message.startswith("--technique "):  # already says what was typed
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


__all__ = ["HelpFormatter", "add_dataclass_flags", "comma_list", "config_from_flags", "field_help", "flag_values",
           "polish", "subcommands", "command_list", "unknown_command", "explain", "as_flags"]
