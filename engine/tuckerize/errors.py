"""Engine errors and the error event the worker reads (the C2 contract, docs/design.md).

Before a non-zero exit the engine prints one JSON line on stdout:

  {"event": "error", "code": "<snake_case>", "detail": "<what was wrong and what to do>",
   "field": "<option path such as finetune.lr>", "node": "<ONNX node>", "data": {...}}

`field` and `node` appear only when known; `data` carries numbers a program acts on, for the codes
whose description in ERROR_CODES names them (so no one parses `detail`). Exit 2 (bad input,
EngineInputError) is never worth retrying; exit 1 (code internal_error) is a bug or a crash and the
worker retries it. `detail` is shown to users: absolute paths are reduced to their last component
and C++ source locations are dropped, so no server path leaks through it.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator, Optional

# code -> when the engine uses it. src/contract/engine-errors.ts is generated from this table.
ERROR_CODES = {
    "invalid_input": "the input cannot be processed (the detail says which part and why)",
    "usage": "the command line is wrong (unknown subcommand or flag, missing argument)",
    "invalid_job": "job.json is missing a field or holds a value of the wrong kind",
    "invalid_option": "an option is out of range, of the wrong type, unknown, or does not fit the rule",
    "invalid_model": "the model cannot be read, or its graph cannot be analyzed or rewritten",
    "invalid_dataset": "the dataset cannot be read or does not fit the model",
    "invalid_latency_table": "the worker's latency-table.json is missing or malformed",
    "target_unreachable": "the model's ranks cannot reach targetMacs/targetParams; data holds the reachable range "
                          "[low, high] or the two nearest achievable ratios",
    "finetune_failed": "fine-tuning could not run or diverged",
    "numeric_failure": "the compressed model produced NaN or Inf",
    "internal_error": "a bug or a crash in the engine (exit 1; the worker retries the job)",
}
DEFAULT_CODE = "invalid_input"


class EngineInputError(ValueError):
    """The input (model, dataset, options) cannot be processed; retrying will not help.

    Messages name the node/op/value at fault and say what to do. `code` is one of ERROR_CODES;
    `field` the option path at fault (finetune.lr), `node` the ONNX node at fault, `data` numbers a
    program acts on (ERROR_CODES says which codes carry what).
    """

    def __init__(self, message: str, *, code: str = DEFAULT_CODE, field: Optional[str] = None,
                 node: Optional[str] = None, data: Optional[dict] = None):
        if code not in ERROR_CODES:
            raise ValueError(f"unknown engine error code {code!r}")
        super().__init__(message)
        self.code, self.field, self.node, self.data = code, field, node, data


@contextmanager
def input_errors(code: str) -> Iterator[None]:
    """EngineInputErrors raised inside without a code of their own get `code`.

    Lets the pipeline say which part of the input was at fault (the model while analyzing it, the
    dataset while fine-tuning) without every raise site knowing its caller.
    """
    if code not in ERROR_CODES:
        raise ValueError(f"unknown engine error code {code!r}")
    try:
        yield
    except EngineInputError as exc:
        if exc.code == DEFAULT_CODE:
            exc.code = _MODULE_CODES.get(_raised_in(exc), code)
        raise


# Modules whose input errors are always about one kind of input, wherever they are called from.
_MODULE_CODES = {f"{__package__}.data": "invalid_dataset"}


def _raised_in(exc: BaseException) -> Optional[str]:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_globals.get("__name__") if tb is not None else None


_QUOTED_PATH = re.compile(r"(['\"])/(?:[^'\"\n]*/)?([^'\"/\n]*)\1")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~/-])/(?:[^\s'\"/:,;()\[\]]+/)+([^\s'\"/:,;()\[\]]*)")
_CXX_LOCATION = re.compile(r"\s*\(?\b[\w./-]+\.(?:cc|cpp|cxx|h|hpp)(?::\d+)+\)?:?")


def public_text(text: str) -> str:
    """`text` on one line, with absolute paths reduced to their last component and C++ locations removed."""
    text = _CXX_LOCATION.sub("", text)
    text = _QUOTED_PATH.sub(lambda m: m.group(1) + (m.group(2) or "<dir>") + m.group(1), text)
    text = _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "<dir>", text)
    return " ".join(text.split())


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def error_event(exc: BaseException) -> dict:
    """The error line for `exc`: its code and fields for EngineInputError, internal_error otherwise."""
    if isinstance(exc, EngineInputError):
        event = {"event": "error", "code": exc.code, "detail": public_text(one_line(exc))}
        if exc.field:
            event["field"] = exc.field
        if exc.node:
            event["node"] = exc.node
        if exc.data:
            event["data"] = exc.data
        return event
    return {"event": "error", "code": "internal_error",
            "detail": f"the engine failed unexpectedly ({type(exc).__name__}); the job is retried, and the worker "
                      "log holds the traceback"}
