"""Bench stage: accuracy, latency and size of every artifact against the teacher."""
