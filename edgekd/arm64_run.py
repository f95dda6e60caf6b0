"""Run an ONNX or .ort model on saved feeds; the arm64 side of `--verify arm64`.

This file runs under the emulated arm64 Python with only numpy and onnxruntime on its
path, so it imports nothing of edgekd. Feeds come from an .npz file (`<batch>/<input>`
keys, no pickles), and each batch's logits go to another .npz file.

    python arm64_run.py MODEL FEEDS.npz OUT.npz [--ort-format]
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
    args = parser.parse_args()
    options = ort.SessionOptions()
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
            batches.setdefault(int(batch), {})[name] = saved[key]
    # copied: onnxruntime may reuse an output's buffer on the next call (edgekd.sessions.GraphSession)
    outputs = {str(index): np.array(session.run(["logits"], batches[index])[0], copy=True)
               for index in sorted(batches)}
    np.savez(args.out, **outputs)
    print(platform.machine(), ort.__version__)


if __name__ == "__main__":
    main()
