"""Run an ONNX or .ort model on saved feeds; the arm64 side of `--verify arm64`.

This file runs under the emulated arm64 Python with only numpy and onnxruntime on its
path, so it imports nothing of edgekd. Feeds come from an .npz file (`<batch>/<input>`
keys, no pickles), and each batch's logits go to another .npz file.

    python arm64_run.py MODEL FEEDS.npz OUT.npz [--ort-format] [--custom-ops]

`--custom-ops` registers ONNX Runtime Extensions' operators (a model with the tokenizer
inside); its string feeds come as fixed-width unicode arrays, which .npz holds without pickles.
"""

import argparse
import platform

import numpy as np
import onnxruntime as ort


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("feeds")
    parser.add_argument("out")
    parser.add_argument("--ort-format", action="store_true")
    parser.add_argument("--custom-ops", action="store_true")
    args = parser.parse_args()
    options = ort.SessionOptions()
    if args.custom_ops:
        from onnxruntime_extensions import get_library_path

        options.register_custom_ops_library(get_library_path())
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    if args.ort_format:
        options.add_session_config_entry("session.load_model_format", "ORT")
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    saved = np.load(args.feeds, allow_pickle=False)
    batches: dict = {}
    for key in saved.files:
        batch, _, name = key.partition("/")
        if name in wanted:
            value = saved[key]
            batches.setdefault(int(batch), {})[name] = value.astype(object) if value.dtype.kind == "U" else value
    # copied: each batch's logits are kept while the next batch runs
    outputs = {str(index): np.array(session.run(["logits"], batches[index])[0], copy=True)
               for index in sorted(batches)}
    np.savez(args.out, **outputs)
    print(platform.machine(), ort.__version__)


if __name__ == "__main__":
    main()
