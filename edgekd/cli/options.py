"""What every command needs to tell tasks' options apart: which options were typed, and
one line for an option of another task than the model's."""

from __future__ import annotations

from typing import Iterable

import typer

from edgekd.errors import UserError

TEXT_CLASSIFICATION = "Text classification only"
CAUSAL_LM = "Causal LM only"
IMAGE_CLASSIFICATION = "Image classification only"


def given_options(ctx: typer.Context) -> set[str]:
    """Names of the options typed on the command line (as opposed to left at their default)."""
    return {name for name in ctx.params
            if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")}


def refuse_options(given: Iterable[str], names: Iterable[str], *, owner: str) -> None:
    """One line naming the first option given that belongs to task `owner` only."""
    for name in [n for n in names if n in set(given)][:1]:
        raise UserError(f"--{name.replace('_', '-')} is an option of --task {owner} only; "
                        f"drop it, or pass --task {owner}")


def refuse_other_tasks(given: Iterable[str], task: str, *, text_only: Iterable[str],
                       causal_lm_only: Iterable[str], image_only: Iterable[str] = (),
                       not_for_images: Iterable[str] = ()) -> None:
    """Refuse, by name, an option of the task that `task` is not. `text_only` options serve
    text (and image) classifiers, but for `not_for_images`, which serve text classifiers alone."""
    given = set(given)
    if task == "causal-lm":
        refuse_options(given, text_only, owner="text-classification")
        refuse_options(given, image_only, owner="image-classification")
    elif task == "image-classification":
        refuse_options(given, causal_lm_only, owner="causal-lm")
        refuse_options(given, not_for_images, owner="text-classification")
    else:
        refuse_options(given, causal_lm_only, owner="causal-lm")
        refuse_options(given, image_only, owner="image-classification")
