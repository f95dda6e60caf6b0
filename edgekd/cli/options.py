"""What every command shares: which options were typed, and each option's default as --help
shows it, read from where the defaults live (the tasks' configs, edgekd.api.DEFAULTS and the
tasks' own), so that the help and the behaviour cannot disagree."""

from __future__ import annotations

from dataclasses import MISSING, fields

import typer

TEXT_CLASSIFICATION = "Text classification only"
CAUSAL_LM = "Causal LM only"
IMAGE_CLASSIFICATION = "Image classification only"
CLASSIFIERS = "Text and image classification"


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
