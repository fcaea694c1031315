"""Job options: job.json is validated against the schema generated from the service's zod schema
(schema/job_options.json), and that schema agrees with the engine's own checks (plan.make_plan's and
finetune.parse_options, which the CLI relies on): whatever the API accepts, the engine accepts."""
from __future__ import annotations

import itertools

import pytest

from tuckerize import finetune, plan
from tuckerize.errors import EngineInputError
from tuckerize.options import OPTION_KEYS, job_options_schema, plan_kwargs, validate_options

SCHEMA = job_options_schema()
FINETUNE_SCHEMA = SCHEMA["$defs"]["FinetuneOptions"]


def schema_accepts(options) -> bool:
    try:
        validate_options(options)
    except EngineInputError:
        return False
    return True


def engine_accepts(options: dict) -> bool:
    """The engine's own checks, the ones `compress`/`analyze`/`candidates` rely on."""
    kwargs = plan_kwargs({k: v for k, v in options.items() if k != "latencyTable"})
    try:
        plan._validate_options(kwargs["rule"], kwargs["ratio"], kwargs["strength"], kwargs["target_macs"],
                               kwargs["target_params"], kwargs["round_to"],
                               latency_table={"layers": {}} if "latencyTable" in options else None,
                               target_latency=kwargs["target_latency"])
        if "finetune" in options:
            finetune.parse_options(options["finetune"])
    except EngineInputError:
        return False
    return True


def test_the_schema_names_what_the_engine_reads():
    assert tuple(SCHEMA["properties"]["rule"]["enum"]) == plan.RULES
    assert set(FINETUNE_SCHEMA["properties"]) == finetune.OPTION_KEYS
    assert SCHEMA["additionalProperties"] is False and FINETUNE_SCHEMA["additionalProperties"] is False


RULE_VALUES = {"ratio": 0.5, "strength": 0.5, "targetMacs": 0.5, "targetParams": 0.5, "targetLatency": 0.5,
               "latencyTable": "/jobs/7/latency-table.json"}


@pytest.mark.parametrize("rule", [None, *plan.RULES])
def test_rule_combinations_agree_with_the_engine(rule):
    """Every combination of the rule-dependent fields: the schema and plan.make_plan's checks agree exactly."""
    for size in range(len(RULE_VALUES) + 1):
        for fields in itertools.combinations(RULE_VALUES, size):
            options = {field: RULE_VALUES[field] for field in fields}
            if rule is not None:
                options["rule"] = rule
            assert schema_accepts(options) == engine_accepts(options), options


# (options, the engine's own checks accept them): the schema must accept exactly when the engine does,
# except where the API is deliberately stricter (marked), never the other way round.
API_STRICTER = "api-stricter"
VALUE_CASES = [
    ({"rule": "ratio", "ratio": 0}, False), ({"rule": "ratio", "ratio": 1}, True),
    ({"rule": "ratio", "ratio": 1.0001}, False), ({"rule": "ratio", "ratio": "half"}, False),
    ({"rule": "ratio", "ratio": True}, API_STRICTER),
    ({"strength": 0}, False), ({"strength": 1}, True), ({"strength": 1.5}, False),
    ({"rule": "budget", "targetMacs": 0}, False), ({"rule": "budget", "targetMacs": 1}, False),
    ({"rule": "budget", "targetMacs": 0.999}, True), ({"rule": "budget", "targetParams": 1e-6}, True),
    ({"rule": "latency", "latencyTable": "/t.json", "targetLatency": 1}, False),
    ({"rule": "latency", "latencyTable": "/t.json", "targetLatency": 0.5, "targetMacs": 0.4}, True),
    ({"roundTo": 0}, False), ({"roundTo": 1}, True), ({"roundTo": 2.5}, False), ({"roundTo": 256}, True),
    ({"roundTo": 257}, API_STRICTER),
    ({"rule": "magic"}, False),
    ({"finetune": {}}, True), ({"finetune": {"bogus": 1}}, False),
    ({"finetune": {"epochs": 0}}, False), ({"finetune": {"epochs": 1000}}, True),
    ({"finetune": {"epochs": 1001}}, API_STRICTER), ({"finetune": {"epochs": 1.5}}, False),
    ({"finetune": {"steps": 0}}, False), ({"finetune": {"steps": 10_000_001}}, API_STRICTER),
    ({"finetune": {"lr": 0}}, False), ({"finetune": {"lr": 10}}, True), ({"finetune": {"lr": 10.5}}, False),
    ({"finetune": {"optimizer": "adamw"}}, True), ({"finetune": {"optimizer": "adam"}}, False),
    ({"finetune": {"weightDecay": 0}}, True), ({"finetune": {"weightDecay": 1.01}}, False),
    ({"finetune": {"warmupSteps": 0}}, True), ({"finetune": {"warmupSteps": -1}}, False),
    ({"finetune": {"distill": "yes"}}, False), ({"finetune": {"labels": False}}, True),
    ({"finetune": {"temperature": 0}}, False), ({"finetune": {"temperature": 100}}, True),
    ({"finetune": {"temperature": 101}}, False),
    ({"finetune": {"alpha": 0}}, True), ({"finetune": {"alpha": 1.1}}, False),
    ({"finetune": {"batchSize": 1}}, False), ({"finetune": {"batchSize": 4096}}, True),
    ({"finetune": {"batchSize": 4097}}, API_STRICTER),
    ({"finetune": {"maxSamples": 0}}, False), ({"finetune": {"evalSamples": 0}}, False),
    ({"finetune": {"checkpointEvery": 0}}, False), ({"finetune": {"checkpointEvery": 1}}, True),
    ({"finetune": {"clipGradNorm": 0}}, True), ({"finetune": {"clipGradNorm": 1e6}}, True),
    ({"finetune": {"clipGradNorm": 1e9}}, False), ({"finetune": {"clipGradNorm": -1}}, False),
]


@pytest.mark.parametrize("options,engine", VALUE_CASES, ids=lambda v: str(v))
def test_value_limits_agree_with_the_engine(options, engine):
    if engine == API_STRICTER:
        assert engine_accepts(options) and not schema_accepts(options)
    else:
        assert engine_accepts(options) == engine, "the case table is wrong about the engine"
        assert schema_accepts(options) == engine


@pytest.mark.parametrize("options,field,message", [
    ({"rule": "ratio", "ratio": 2}, "ratio", r"options.ratio: 2 is greater than the maximum of 1 \(rule=ratio"),
    ({"ratoi": 0.5}, "ratoi", r"unknown option\(s\) \['ratoi'\]; known: \["),
    ({"finetune": {"lr": 50}}, "finetune.lr", "options.finetune.lr: 50 is greater than the maximum of 10"),
    ({"finetune": {"momentum": 0.9}}, "finetune.momentum", r"options.finetune: unknown option\(s\) \['momentum'\]"),
    ({"inputShape": [1, 3, 0, 8]}, "inputShape", "options.inputShape: 0 is less than the minimum of 1"),
    ({"rule": "budget"}, "targetMacs", "rule=budget needs targetMacs or targetParams"),
    ({"rule": "budget", "targetMacs": 0.5, "targetParams": 0.5}, "targetParams", "not both"),
    ({"ratio": 0.5}, "ratio", "ratio applies only to rule=ratio, not rule=vbmf"),
    # A wrong value is named before a rule it then breaks.
    ({"rule": "ratio", "ratio": "half", "strength": 0.5}, "ratio", "'half' is not of type 'number'"),
])
def test_violations_name_the_field(options, field, message):
    with pytest.raises(EngineInputError, match=message) as info:
        validate_options(options)
    assert info.value.code == "invalid_option" and info.value.field == field


# Options the engine reads outside plan_kwargs; every other option of the schema must reach make_plan.
READ_ELSEWHERE = {
    "inputShape": "run.py and the CLI: the input size for shapes",
    "finetune": "finetune.parse_options",
    "latencyTable": "plan_kwargs, read through latency_table.read_latency_table",
    "maxAccuracyDrop": "run.py and search.py: the accuracy-target search",
    "calibrationSamples": "options.py: the sample count for calibrate.py",
}


def test_plan_kwargs_reads_every_rank_option_of_the_schema():
    for key in OPTION_KEYS - set(READ_ELSEWHERE):
        assert plan_kwargs({key: "sentinel"}) != plan_kwargs({}), f"plan_kwargs ignores options.{key}"
    assert plan_kwargs({"rule": "latency", "latencyTable": "/t.json"}, {"layers": {}})["latency_table"] == {"layers": {}}


def test_plan_kwargs_maps_every_rank_option():
    options = {"rule": "budget", "targetMacs": 0.4, "roundTo": 8, "force": True, "strength": None}
    expected = {"rule": "budget", "ratio": None, "strength": None, "force": True, "round_to": 8, "target_macs": 0.4,
                "target_params": None, "target_latency": None, "latency_table": None}
    kwargs = plan_kwargs(options)
    assert {key: kwargs[key] for key in expected} == expected
    assert plan_kwargs({})["rule"] == "vbmf" and plan_kwargs({})["force"] is False
