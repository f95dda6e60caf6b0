"""Latency measured interleaved: A B C A B C ..., so a noisy shared machine hits all alike."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

# Above this interquartile range relative to the median, a latency is too noisy to trust:
# the report warns and suggests more repeats or a quieter machine.
MAX_RELATIVE_IQR = 0.25


def interleaved(runners: dict[str, Callable[[], object]], *, rounds: int, warmup: int = 0,
                progress=None) -> dict[str, list]:
    """What each runner returns in each of `rounds` rounds, after `warmup` rounds whose results
    are dropped: the one interleaved loop of every measurement (latency, decode speed).

    Each round calls every runner once, in the same order: drift of the machine during
    the run spreads over all runners instead of biasing whichever ran last.
    """
    for _ in range(warmup):
        for run in runners.values():
            run()
    results = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            results[name].append(run())
        if progress is not None:
            progress(1)
    return results


def measure_interleaved(runners: dict[str, Callable[[], object]], *, repeats: int,
                        warmup: int = 3, progress=None) -> dict[str, np.ndarray]:
    """Seconds per call of each runner, `repeats` interleaved rounds after `warmup` untimed ones."""
    def timed(run: Callable[[], object]) -> Callable[[], float]:
        def call() -> float:
            started = time.perf_counter()
            run()
            return time.perf_counter() - started
        return call

    seconds = interleaved({name: timed(run) for name, run in runners.items()}, rounds=repeats, warmup=warmup,
                          progress=progress)
    return {name: np.array(values) for name, values in seconds.items()}


def summarize(seconds: np.ndarray) -> dict[str, float]:
    """p50 / p90 / p99 and the interquartile range, in milliseconds."""
    ms = np.asarray(seconds) * 1000
    q25, p50, q75, p90, p99 = np.percentile(ms, [25, 50, 75, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "iqr_ms": float(q75 - q25), "relative_iqr": float((q75 - q25) / p50) if p50 > 0 else 0.0,
            "repeats": int(len(ms))}


def throughput(seconds: np.ndarray, *, batch_size: int) -> dict[str, float]:
    """Examples per second at `batch_size` from the median call time."""
    median = float(np.median(seconds))
    return {"batch_size": batch_size, "examples_per_s": batch_size / median,
            "p50_ms": median * 1000, "repeats": int(len(seconds))}


def noisy(summary: dict[str, float], *, limit: float = MAX_RELATIVE_IQR) -> bool:
    """True when the spread of a latency summary is too wide to trust its median."""
    return summary["relative_iqr"] > limit
