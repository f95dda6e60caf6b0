"""Recipes are YAML files whose keys are exactly the distill command's options."""

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.cli.distill import CAUSAL_LM_ONLY_OPTIONS, IMAGE_ONLY_OPTIONS, TEXT_ONLY_OPTIONS, recipe_values, run
from edgekd.config import DistillConfig
from edgekd.errors import UserError
from edgekd.config import LMDistillConfig

EXAMPLES = Path(__file__).parent.parent / "examples"
RECIPES = sorted(EXAMPLES.rglob("*.yaml"))


def _distill_command():
    return typer.main.get_command(app).commands["distill"]


def test_there_are_shipped_recipes():
    assert len(RECIPES) >= 6  # kd, tinybert, distilbert, minilm and the evidence recipes


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_shipped_recipe_matches_the_cli(recipe):
    command = _distill_command()
    values = recipe_values(recipe, command)  # raises on any key that is not an option
    assert values, f"{recipe} is empty"
    defaults = {param.name: param.default for param in command.params if param.param_type_name == "option"}
    assert set(values) <= set(defaults)
    merged = {**defaults, **values}
    # The merged options build a valid config: the recipe's values pass every range check.
    training = {k: merged[k] for k in DistillConfig.__dataclass_fields__}
    DistillConfig(**training)


def _options(command_name: str) -> set[str]:
    command = typer.main.get_command(app).commands[command_name]
    return {param.name for param in command.params if param.param_type_name == "option"}


def test_every_config_field_is_a_cli_option_and_back():
    # run() passes everything it does not use itself straight into DistillConfig, so the
    # two lists must match exactly: a new field without an option (or the reverse) fails here.
    # --task and the causal-LM and image options are taken off before run() is called.
    import inspect

    options = _options("distill") - {"task", *CAUSAL_LM_ONLY_OPTIONS, *IMAGE_ONLY_OPTIONS}
    used_by_run = {name for name, p in inspect.signature(run).parameters.items() if p.kind is p.KEYWORD_ONLY}
    config_fields = set(DistillConfig.__dataclass_fields__)
    assert options - used_by_run == config_fields - {"max_length", "seed", "validation_fraction"}


def test_every_causal_lm_config_field_is_an_option_both_tasks_share_or_its_own():
    # run_causal_lm builds LMDistillConfig from the options given by their names: every field
    # must be an option of distill, and none of them one the text task keeps to itself.
    options = _options("distill")
    renamed = {"train_embeddings": "freeze_embeddings"}  # a flag that switches the field off
    config_fields = {renamed.get(name, name) for name in LMDistillConfig.__dataclass_fields__} - {"bf16"}
    assert config_fields <= options  # bf16 is always on for CUDA from the CLI
    assert not config_fields & set(TEXT_ONLY_OPTIONS)
    # the options both tasks read have one name: epochs, max steps and the hard-label weight among them
    shared = set(DistillConfig.__dataclass_fields__) & set(LMDistillConfig.__dataclass_fields__)
    assert {"epochs", "max_steps", "hard_label_weight", "lr", "batch_size", "temperature"} <= shared


def test_recipe_errors_name_the_key(tmp_path):
    command = _distill_command()
    bad = tmp_path / "bad.yaml"
    bad.write_text("student_layers: 2\n")
    with pytest.raises(UserError, match="'student_layers' is not a distill option; did you mean student-layers"):
        recipe_values(bad, command)
    bad.write_text("epochs: many\n")
    with pytest.raises(UserError, match="epochs: 'many': Input should be a valid integer"):
        recipe_values(bad, command)
    bad.write_text("epochs: [1\n")
    with pytest.raises(UserError, match="not valid YAML"):
        recipe_values(bad, command)
    with pytest.raises(UserError, match="cannot read recipe"):
        recipe_values(tmp_path / "missing.yaml", command)


def test_flags_override_the_recipe(teacher_dir, train_file, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"teacher: {teacher_dir}\nstudent-layers: '1'\nepochs: 3\nmax-length: 16\n"
                      "batch-size: 32\nlr: 0.001\nquiet: true\nteacher-cache: false\n")
    out = tmp_path / "student"
    result = CliRunner().invoke(app, ["distill", "--recipe", str(recipe), "--data", str(train_file),
                                      "--out", str(out), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["epoch"] for r in records) == 1  # --epochs 1 beat the recipe's 3
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1  # from the recipe
