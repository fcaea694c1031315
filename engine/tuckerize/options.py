"""Job options: the `options` object of job.json (the API's JobOptions) and how the engine uses them.

schema/job_options.json is generated from the service's src/contract/job-options.ts (`npm run
contract`): the field checks and the rank rules the API applies at POST /v1/jobs, plus what the
worker adds for rule=latency. validate_options checks job.json against it, so a job the API accepted
is one the engine accepts, and a complaint names the option (field) the way the API does.

The CLI turns its flags into the same camelCase options, so `compress`, `candidates`, `analyze` and
`run` plan with one mapping (plan_kwargs).
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Optional

from .errors import EngineInputError
from .latency_table import read_latency_table
from .ranks import TARGET_HOST

SCHEMA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema", "job_options.json")


@lru_cache(maxsize=1)
def job_options_schema() -> dict:
    with open(SCHEMA_FILE, encoding="utf-8") as handle:
        return json.load(handle)


OPTION_KEYS = frozenset(job_options_schema()["properties"])


def validate_options(options) -> None:
    """Raise EngineInputError(code invalid_option, field) for the first violation of the options schema.

    Field checks (type, range, unknown keys) come before the rank rules, so a wrong value is named as
    such rather than as a rule that then does not fit.
    """
    from jsonschema import Draft202012Validator

    schema = job_options_schema()
    errors = list(Draft202012Validator(schema).iter_errors(options))
    if not errors:
        return
    errors.sort(key=lambda e: (_is_rule(e), [str(p) for p in e.absolute_path], str(e.absolute_schema_path)))
    field, message = _describe(errors[0], schema)
    raise EngineInputError(message, code="invalid_option", field=field)


def _is_rule(error) -> bool:
    return bool(error.absolute_schema_path) and error.absolute_schema_path[0] == "allOf"


def _field(path) -> Optional[str]:
    """An option path such as finetune.lr; list indices (inputShape's) end it."""
    parts = []
    for part in path:
        if not isinstance(part, str):
            break
        parts.append(part)
    return ".".join(parts) or None


def _describe(error, schema: dict) -> tuple[Optional[str], str]:
    if _is_rule(error):
        rule = schema["allOf"][error.absolute_schema_path[1]]
        return rule["x-field"], f"options: {rule['description']}"
    field = _field(error.absolute_path)
    where = f"options.{field}" if field else "options"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(known))
        name = f"{field}.{unknown[0]}" if field else unknown[0]
        return name, f"{where}: unknown option(s) {unknown}; known: {known}"
    text = f"{where}: {error.message}"
    description = None
    if field:
        description = (error.schema.get("description") if isinstance(error.schema, dict) else None) or \
            _property_schema(schema, field).get("description")
    return field, f"{text} ({description})" if description else text


def _property_schema(schema: dict, field: str) -> dict:
    node = schema
    for part in field.split("."):
        node = node.get("properties", {}).get(part, {})
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def plan_kwargs(options: dict, latency_table: Optional[dict] = None, default_method: str = "paper") -> dict:
    """plan.make_plan's rank-rule keyword arguments for `options`.

    default_method: the plan method when options.method is absent; jobs (run.py) use 'improved', the
    CLI's compress/analyze keep the paper's method unless --method says otherwise.

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
        # Ranks are rounded to the deployment CPU's channel block (ranks.channel_block): this machine's
        # unless options.target names another ({"block": 1} turns rounding off). The paper's method
        # has no rounding unless the job asks for it.
        "target": options.get("target", {"block": 1} if options.get("method") == "paper" else TARGET_HOST),
        "method": options.get("method", default_method),
    }


def calibration_samples(options: dict, has_dataset: bool) -> int:
    """Images for calibrate.py: options.calibrationSamples, else 1024 with a dataset and method 'improved'."""
    if not has_dataset:
        return 0
    default = 0 if options.get("method") == "paper" else 1024
    return int(options.get("calibrationSamples", default))
