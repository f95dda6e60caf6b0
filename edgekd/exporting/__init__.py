"""Export stage: ONNX export, quantisation, parity checks, one folder per target."""
