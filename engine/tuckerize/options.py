"""Job options: the `options` object of job.json (the API's JobOptions) and how the engine uses them.

The CLI turns its flags into the same camelCase options, so `compress`, `candidates`, `analyze` and
`run` plan with one mapping (plan_kwargs).
"""
from __future__ import annotations

from typing import Optional

from .latency_table import read_latency_table

OPTION_KEYS = frozenset({"rule", "ratio", "strength", "targetMacs", "targetParams", "targetLatency", "roundTo",
                         "force", "inputShape", "finetune", "latencyTable"})


def plan_kwargs(options: dict, latency_table: Optional[dict] = None) -> dict:
    """plan.make_plan's rank-rule keyword arguments for `options`.

    latency_table: options.latencyTable already read (the job's checkpoint key needs its content);
    read from the path in the options when not given.
    """
    if latency_table is None and options.get("latencyTable"):
        latency_table = read_latency_table(options["latencyTable"])
    return {
        "rule": options.get("rule", "vbmf"), "ratio": options.get("ratio"), "strength": options.get("strength"),
        "force": bool(options.get("force", False)), "round_to": options.get("roundTo"),
        "target_macs": options.get("targetMacs"), "target_params": options.get("targetParams"),
        "target_latency": options.get("targetLatency"), "latency_table": latency_table,
    }
