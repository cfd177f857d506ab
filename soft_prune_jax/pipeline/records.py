"""The JSON records a pipeline run leaves in its workdir (one file per phase, plus timings.json)."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import numpy as np

TIMINGS = "timings.json"


def json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_json(workdir: str, name: str, data: Mapping[str, Any]) -> None:
    """WORKDIR/name, written atomically by process 0 only."""
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, name)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=json_default)
    os.replace(path + ".tmp", path)


def read_json(workdir: str, name: str, *, needed_by: str) -> dict:
    """WORKDIR/name; a missing file names the phase that writes it."""
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
        producer = name.split(".")[0]
        raise FileNotFoundError(
            f"{path} does not exist: the {needed_by} phase needs the {producer} phase's "
            f"output; run --phases={producer} first"
        )
    with open(path) as f:
        return json.load(f)


def read_existing(workdir: str, names) -> dict:
    """{name: record} for each WORKDIR/<name>.json that exists."""
    out = {}
    for name in names:
        path = os.path.join(workdir, f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                out[name] = json.load(f)
    return out


def record_seconds(workdir: str, phase: str, seconds: float) -> None:
    """WORKDIR/timings.json: wall seconds of the latest run of each phase (the report shows them)."""
    path = os.path.join(workdir, TIMINGS)
    timings = {}
    if os.path.exists(path):
        with open(path) as f:
            timings = json.load(f)
    timings[phase] = round(seconds, 2)
    write_json(workdir, TIMINGS, timings)
