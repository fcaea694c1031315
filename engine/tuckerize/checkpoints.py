"""Training checkpoints as tensors plus JSON: atomic to write, safe to read, identical on every torch.

A checkpoint is a nested structure (model/optimizer/scheduler state dicts, RNG states, counters). It is
saved as {"meta": JSON text, "tensors": {key: tensor}}, so loading never unpickles anything but
tensors and strings: `torch.load(weights_only=True)` accepts it even on torch 1.13, whose restricted
unpickler refuses Python floats (found in every optimizer state dict). Dict keys keep their types
(optimizer state is keyed by int), and floats round-trip exactly through JSON.
"""
from __future__ import annotations

import inspect
import json
import os
from typing import Any

import torch

FORMAT = "tuckerize-checkpoint-1"


def save_checkpoint(state: Any, path: str | os.PathLike) -> None:
    """Write `state` to `path` atomically: a crash leaves the previous checkpoint or the new one, never half."""
    tensors: dict[str, torch.Tensor] = {}
    meta = json.dumps({"format": FORMAT, "state": _encode(state, tensors)})
    tmp = f"{os.fspath(path)}.tmp"
    torch.save({"meta": meta, "tensors": tensors}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location=None) -> Any:
    """Read a checkpoint written by `save_checkpoint`; raises ValueError for any other file."""
    kwargs = {"weights_only": True} if "weights_only" in inspect.signature(torch.load).parameters else {}
    payload = torch.load(os.fspath(path), map_location=map_location, **kwargs)
    if not isinstance(payload, dict) or not isinstance(payload.get("meta"), str):
        raise ValueError(f"{path} is not a tuckerize checkpoint")
    meta = json.loads(payload["meta"])
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} has checkpoint format {meta.get('format')!r}, expected {FORMAT!r}")
    return _decode(meta["state"], payload["tensors"])


def _encode(value: Any, tensors: dict) -> Any:
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().clone() if value.requires_grad else value
        return {"$tensor": key}
    if isinstance(value, dict):
        return {"$dict": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"checkpoint values must be tensors, containers or JSON scalars, not {type(value).__name__}")


def _decode(value: Any, tensors: dict) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if "$tensor" in value:
            return tensors[value["$tensor"]]
        if "$tuple" in value:
            return tuple(_decode(v, tensors) for v in value["$tuple"])
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["$dict"]}
    return value
