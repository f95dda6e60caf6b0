"""Recipes are YAML files whose keys are exactly the distill command's options."""

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.api import distill as api_distill, recipe_values
from edgekd.config import DistillConfig, config_from
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
    values = recipe_values(recipe)  # raises on any key that is not an option
    assert values, f"{recipe} is empty"
    options = {param.name for param in command.params if param.param_type_name == "option"}
    assert set(values) <= options
    # The recipe's values over the defaults build a valid config: they pass every range check.
    config_from(DistillConfig, values, set(values))


def _options(command_name: str) -> set[str]:
    command = typer.main.get_command(app).commands[command_name]
    return {param.name for param in command.params if param.param_type_name == "option"}


def test_every_config_field_is_a_cli_option_and_back():
    # edgekd.distill builds each task's config from the options given by their names, so every
    # field must be an option of the task, and the command line and the API must have the same
    # options: a new field without an option (or the reverse) fails here.
    import inspect

    from edgekd.tasks import TASKS

    options = _options("distill")
    keywords = set(inspect.signature(api_distill).parameters) - {"log"}
    assert options == keywords
    text = TASKS["text-classification"]
    shared = {name for name in options if not any(name in t.options["distill"] for t in TASKS.values())}
    text_reads = shared | text.options["distill"]
    assert set(DistillConfig.__dataclass_fields__) <= text_reads
    # what the text task reads beyond its config is what its pipeline itself uses
    pipeline_options = text_reads - set(DistillConfig.__dataclass_fields__)
    assert pipeline_options == {"task", "teacher", "data", "split", "out", "recipe", "student_layers", "student_config",
                                "student_init", "student", "latency_budget_ms", "budget_target", "trim_vocab",
                                "trim_vocab_min_count", "trim_vocab_max_drop", "sequence_length", "validation_data",
                                "validation_split", "text_column", "label_column", "text_pair_column", "cache_dir", "allow_poor_student",
                                "resume", "overwrite", "quiet", "trust_remote_code", "fine_tune_teacher", "augment"}


def test_every_causal_lm_config_field_is_an_option_both_tasks_share_or_its_own():
    # run_causal_lm builds LMDistillConfig from the options given by their names: every field
    # must be an option of distill, and none of them one the text task keeps to itself.
    options = _options("distill")
    renamed = {"train_embeddings": "freeze_embeddings"}  # a flag that switches the field off
    config_fields = {renamed.get(name, name) for name in LMDistillConfig.__dataclass_fields__} - {"bf16"}
    assert config_fields <= options  # bf16 is always on for CUDA from the CLI
    from edgekd.tasks import CAUSAL_LM, TEXT_CLASSIFICATION

    assert not config_fields & (TEXT_CLASSIFICATION.options["distill"] - CAUSAL_LM.options["distill"])
    # the options both tasks read have one name: epochs, max steps and the hard-label weight among them
    shared = set(DistillConfig.__dataclass_fields__) & set(LMDistillConfig.__dataclass_fields__)
    assert {"epochs", "max_steps", "hard_label_weight", "lr", "batch_size", "temperature"} <= shared


def test_recipe_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("student_layers: 2\n")
    with pytest.raises(UserError, match="'student_layers' is not a distill option; did you mean student-layers"):
        recipe_values(bad)
    bad.write_text("epochs: many\n")
    with pytest.raises(UserError, match="epochs: 'many': Input should be a valid integer"):
        recipe_values(bad)
    bad.write_text("epochs: [1\n")
    with pytest.raises(UserError, match="not valid YAML"):
        recipe_values(bad)
    with pytest.raises(UserError, match="cannot read recipe"):
        recipe_values(tmp_path / "missing.yaml")


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


def test_an_empty_recipe_entry_leaves_the_option_at_its_default(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs:\nstudent-layers: '1'\n")
    assert recipe_values(recipe) == {"student_layers": "1"}
