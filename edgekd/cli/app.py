"""The typer app, error handling and library quieting shared by every command."""

from __future__ import annotations

import functools
from typing import Callable

import typer

from edgekd.errors import UserError, first_line

app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
    help="Distill a large teacher into a compact student, export it for edge devices, "
         "and prove the result.\n\n"
         "Three commands take a teacher to a shipped artifact:\n\n"
         "    edgekd distill --teacher my-teacher --data train.csv --out runs/student\n\n"
         "    edgekd export runs/student --target onnx-int8 --out runs/export\n\n"
         "    edgekd bench --teacher my-teacher --student runs/student "
         "--artifacts runs/export --data test.csv\n\n"
         "The same commands serve text classifiers and decoder language models: the task is "
         "read from the teacher's (or student's) config.json, `--task` names it when needed, and "
         "`edgekd targets` lists which targets serve which task.\n\n"
         "`edgekd demo` runs all three offline on the bundled MiniLM + BBC News default; "
         "`edgekd demo --task causal-lm` on SmolLM2-135M.")

_state = {"debug": False}


@app.callback()
def _global(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    from edgekd.progress import show_library_output, silence_libraries

    _state["debug"] = debug
    show_library_output(debug)
    stop_cleanly_on_sigterm()
    if not debug:
        silence_libraries()


def user_errors(command: Callable) -> Callable:
    """Turn a UserError into one line on stderr and a non-zero exit (traceback with --debug)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as error:
            if _state["debug"]:
                raise
            typer.secho(f"error: {error}", fg="red", err=True)
            raise typer.Exit(error.exit_code) from None
        except Exception as error:  # noqa: BLE001 - only storage failures are turned into a line
            if _state["debug"] or not _is_storage_error(error):
                raise
            where = f" {error.filename}" if getattr(error, "filename", None) else ""
            reason = getattr(error, "strerror", None) or first_line(error)
            typer.secho(f"error: cannot write{where}: {reason}; free some space or choose a "
                        "writable output folder (nothing half-written was kept)", fg="red", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as interrupt:
            terminated = isinstance(interrupt, Terminated)
            how = ("rerun it with --resume to continue from its last checkpoint" if command.__name__ == "distill"
                   else "rerun it to start again")
            typer.secho(f"edgekd {command.__name__} was interrupted ({'SIGTERM' if terminated else 'Ctrl-C'}); "
                        f"nothing half-written was kept; {how}", fg="yellow", err=True)
            raise typer.Exit(143 if terminated else 130) from None

    return wrapper


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it unwinds like Ctrl-C: staging folders
    are removed, checkpoints already written stay; the exit code is 143."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def stop_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into `Terminated` (in the main thread; a no-op elsewhere)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)


def _is_storage_error(error: Exception) -> bool:
    """Full disk, read-only file system, permission denied: the user can act on these.

    Libraries that write through their own code (safetensors, torch.save) raise their own
    types, so besides OSError's errno the message is read too."""
    import errno

    if isinstance(error, OSError) and error.errno in (
            errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM):
        return True
    text = str(error)
    return any(marker in text for marker in ("No space left on device", "os error 28",
                                             "Read-only file system", "Disk quota exceeded"))

