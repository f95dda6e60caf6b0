"""No pickle from a user's path is ever executed, and remote code only runs when asked for."""

import json
import pickle

from typer.testing import CliRunner

from conftest import make_config, make_tokenizer
from edgekd.cli import app
from edgekd.errors import UserError
from edgekd.models import load_classifier


class _Payload:
    """Unpickling this writes a marker file: proof that a pickle was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_weights_are_never_executed(tmp_path):
    folder, marker = tmp_path / "model", tmp_path / "PWNED"
    folder.mkdir()
    config = make_config("bert", layers=1)
    config.architectures = ["BertForSequenceClassification"]
    config.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"bert.embeddings.word_embeddings.weight": _Payload(marker)}, handle)
    try:
        load_classifier(folder)
    except UserError:
        pass  # refusing the file is fine; running it is not
    assert not marker.exists()


def test_remote_code_is_not_run_without_trust_remote_code(tmp_path):
    folder, marker = tmp_path / "model", tmp_path / "RAN"
    folder.mkdir()
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import BertConfig\n"
        "class EvilConfig(BertConfig):\n    model_type = 'evil'\n")
    config = make_config("bert", layers=1).to_dict()
    config.update(model_type="evil", architectures=["EvilForSequenceClassification"],
                  auto_map={"AutoConfig": "evil.EvilConfig",
                            "AutoModelForSequenceClassification": "evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["distill", "--teacher", str(folder), "--data",
                                      str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "trust-remote-code" in result.output or "trust_remote_code" in result.output
    assert not marker.exists()
