"""`--exporter optimum`: Optimum's ONNX exporter, for architectures ours does not cover.

Optimum's exporter lives in `optimum-onnx`, which pins transformers<4.58, so it runs in
its own virtual environment (`pip install -c constraints.txt 'edgekd[optimum]'`, see
`make test-optimum`). The graph it writes goes through the same parity and accuracy
checks as every other export.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from edgekd.errors import UserError, first_line


def export_with_optimum(student_dir: Path, path: Path, *, opset: int) -> list[str]:
    """Write the student as ONNX to `path` with Optimum; returns the graph's input names."""
    try:
        from optimum.exporters.onnx import main_export
    except ImportError as error:
        raise UserError("--exporter optimum needs optimum-onnx, which requires transformers<4.58; "
                        "install 'edgekd[optimum]' in its own virtual environment "
                        "(make test-optimum builds one)") from error
    import onnx

    with tempfile.TemporaryDirectory(prefix="edgekd-optimum-") as scratch:
        try:
            main_export(str(student_dir), output=scratch, task="text-classification",
                        opset=opset, do_validation=False, library_name="transformers")
        except Exception as error:  # Optimum raises ValueError/KeyError for unsupported models
            raise UserError(f"Optimum cannot export {student_dir}: "
                            f"{first_line(error)[:200]}") from error
        shutil.copyfile(Path(scratch) / "model.onnx", path)
    graph = onnx.load(str(path), load_external_data=False).graph
    return [i.name for i in graph.input]
