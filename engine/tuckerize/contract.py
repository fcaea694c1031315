"""The engine's side of the contract with the TypeScript service, as data.

`python3 -m tuckerize.contract` prints these constants as JSON; `npm run contract` writes them into
src/contract/engine.ts, and test/contract.test.ts fails when the two drift apart. The other
direction (job options, defined in TypeScript) arrives as schema/job_options.json (options.py).
"""
from __future__ import annotations

import json

from .errors import ERROR_CODES
from .exits import EXIT_CRASH, EXIT_INPUT, EXIT_OK, EXIT_TERMINATED
from .latency_table import LATENCY_MIN_SPEEDUP, LATENCY_TABLE_FILE
from .onnx_graph import MAX_OPSET, MIN_OPSET
from .run import STAGES


def engine_constants() -> dict:
    return {
        "stages": list(STAGES),
        "latencyMinSpeedup": LATENCY_MIN_SPEEDUP,
        "latencyTableFile": LATENCY_TABLE_FILE,
        "opset": {"min": MIN_OPSET, "max": MAX_OPSET},
        "exit": {"ok": EXIT_OK, "crash": EXIT_CRASH, "input": EXIT_INPUT, "terminated": EXIT_TERMINATED},
        "errorCodes": dict(ERROR_CODES),
    }


if __name__ == "__main__":
    print(json.dumps(engine_constants(), indent=2))
