"""A command from its API function: the function's keywords are the options, its docstring's
Options section their help, the tasks' tables their defaults (`--help` shows each task's, read
from where the defaults live: the tasks' configs, edgekd.api.DEFAULTS and the tasks' own) and
panels (the tasks that read an option). So an option is declared once, in edgekd/api.py, for
Python and for the command line alike, and the help cannot disagree with the behaviour."""

from __future__ import annotations

import collections.abc
import inspect
import textwrap
import typing
from dataclasses import MISSING, fields
from typing import Callable, List, Optional

import typer


def given_options(ctx: typer.Context) -> dict:
    """The options typed on the command line (as opposed to left at their default), by name."""
    return {name: value for name, value in ctx.params.items()
            if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")}


def task_defaults(command: str, name: str) -> dict[str, object]:
    """The default of option `name` of `command` for each task that reads it."""
    from edgekd.api import DEFAULTS
    from edgekd.tasks import TASKS

    defaults = {}
    for task in TASKS.values():
        owned = any(name in other.options.get(command, ()) for other in TASKS.values())
        if owned and name not in task.options.get(command, ()):
            continue
        config = {field.name: field.default for field in fields(task.training_config)
                  if field.default is not MISSING} if command == "distill" else {}
        value = {**DEFAULTS.get(command, {}), **task.defaults.get(command, {}), **config}.get(name)
        if value is not None:
            defaults[task.name] = value
    return defaults


def default_help(command: str, name: str, text: str) -> str:
    """`text` followed by the option's default, per task where tasks differ."""
    defaults = task_defaults(command, name)
    shown = {task: _shown(value) for task, value in defaults.items()}
    if not shown:
        return text
    if len(set(shown.values())) == 1:
        return f"{text} [default: {next(iter(shown.values()))}]"
    return f"{text} [default: " + "; ".join(f"{task} {value}" for task, value in shown.items()) + "]"


def _shown(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (tuple, list)):
        return ", ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def option_help(function: Callable) -> dict[str, str]:
    """Each option's help, from the `Options` section of the function's docstring
    (`name: text`, continued on further-indented lines)."""
    lines = textwrap.dedent(function.__doc__.partition("\n")[2]).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Options"))
    helps: dict[str, str] = {}
    for line in lines[start + 1:]:
        if line.startswith("    ") and not line.startswith("        "):
            name, _, text = line.strip().partition(": ")
            helps[name] = text
        elif line.strip():
            helps[name] += " " + line.strip()
    return helps


def panel(command: str, name: str) -> str | None:
    """The help panel of an option that not every task reads: the tasks that do."""
    from edgekd.tasks import TASKS

    readers = [task.name for task in TASKS.values() if name in task.options.get(command, ())]
    return f"Only {' and '.join(readers)}" if readers else None


def _typer_type(kind) -> object:
    """The annotation typer parses a flag's text by: lists of repeatable flags, else the type."""
    if typing.get_origin(kind) in (list, tuple, collections.abc.Sequence):
        element = (getattr(kind, "__args__", None) or (str,))[0]
        return Optional[List[element]]
    return Optional[kind]


def command(function: Callable, *, name: str, help: str, arguments: tuple[str, ...] = (),
            required: tuple[str, ...] = (), flags: dict[str, str] | None = None,
            after: Callable[[object], None] = lambda result: None) -> Callable:
    """The typer callback of `edgekd <name>`: parses, calls `function` with the options given
    (the rest take their defaults there), hands its result to `after`."""
    from edgekd.api import option_types

    flags = flags or {}
    keywords = {flags.get(keyword, keyword): keyword for keyword in inspect.signature(function).parameters
                if keyword != "log"}
    types, helps = option_types(function), option_help(function)
    parameters = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    for flag, keyword in keywords.items():
        text = helps[keyword]
        if keyword in arguments:
            default = typer.Argument(..., help=text, metavar=flag.upper())
        else:
            dashed = flag.replace("_", "-")
            declared = f"--{dashed}/--no-{dashed}" if types[keyword] is bool else f"--{dashed}"
            default = typer.Option(... if keyword in required else None, declared,
                                   help=default_help(name, keyword, text), rich_help_panel=panel(name, keyword))
        parameters.append(inspect.Parameter(flag, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=_typer_type(types[keyword])))

    def callback(ctx: typer.Context, **_):
        given = {keywords[flag]: value for flag, value in given_options(ctx).items()}
        after(function(**given, log=typer.echo))

    callback.__signature__ = inspect.Signature(parameters)
    callback.__name__, callback.__doc__ = name, help
    return callback


def register(app: typer.Typer, callback: Callable) -> None:
    """Add the command to the app, its errors turned into one line (edgekd/cli/app.py)."""
    from edgekd.cli.app import user_errors

    app.command(name=callback.__name__)(user_errors(callback))
