"""`edgekd generate`: run an exported causal LM on a prompt."""

from __future__ import annotations

from pathlib import Path

import typer

from edgekd.cli.app import app, user_errors


@app.command()
@user_errors
def generate(
    artifact: Path = typer.Argument(..., help="A causal-LM target folder written by edgekd export (e.g. runs/lm-export/onnx-int4)."),
    prompt: str = typer.Option(..., help="Text to continue."),
    max_new_tokens: int = typer.Option(32, help="Tokens to generate (greedy; stops at end-of-text)."),
    threads: int = typer.Option(1, help="ONNX Runtime intra-op threads."),
):
    """Continue a prompt with an exported causal LM in ONNX Runtime (greedy).

    Example:

        edgekd generate runs/lm-export/onnx-int4 --prompt "The government said"
    """
    from edgekd.errors import UserError
    from edgekd.lm.generate import generate as run_generate

    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    result = run_generate(artifact, prompt, new_tokens=max_new_tokens, threads=threads)
    typer.echo(prompt + result.text)
    typer.secho(f"{result.prompt_tokens} prompt tokens, {len(result.new_tokens)} new; "
                f"prefill {result.prefill_seconds * 1000:.0f} ms, decode "
                f"{result.decode_tokens_per_second:.1f} tokens/s", err=True, fg="cyan")
