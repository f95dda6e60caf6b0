"""edgekd: distill a large teacher into a compact student, export it for edge devices,
and prove with one report how much accuracy was kept and how much faster it runs.

    import edgekd

    student = edgekd.distill(teacher="runs/teacher", data="train.csv", out="runs/student")
    artifacts = edgekd.export(student.path, targets=["onnx-int8"], out="runs/export", data="val.csv")
    report = edgekd.bench(teacher="runs/teacher", student=student.path, artifacts=["runs/export"],
                          data="test.csv", out="runs/bench")

docs/python-api.md describes the three functions; the command line wraps exactly these.
"""

__version__ = "0.1.0"

from edgekd.api import bench, distill, export  # noqa: E402
from edgekd.errors import GateFailed, UserError  # noqa: E402
from edgekd.results import Report, Student  # noqa: E402

__all__ = ["distill", "export", "bench", "Student", "Report", "UserError", "GateFailed", "__version__"]
