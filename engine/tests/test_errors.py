"""The error event (C2): codes, fields, and details without server paths."""
from __future__ import annotations

import json

import pytest

from tuckerize.errors import ERROR_CODES, EngineInputError, error_event, input_errors, public_text


def test_input_error_event_carries_code_field_and_node():
    exc = EngineInputError("options.finetune.lr must be a number in (0.0, 10.0], got 50", code="invalid_option",
                           field="finetune.lr")
    assert error_event(exc) == {"event": "error", "code": "invalid_option", "field": "finetune.lr",
                                "detail": "options.finetune.lr must be a number in (0.0, 10.0], got 50"}
    event = error_event(EngineInputError("node 'conv1' has a dynamic weight", code="invalid_model", node="conv1"))
    assert event["node"] == "conv1" and "field" not in event and "data" not in event
    event = error_event(EngineInputError("target macs ratio 0.01 is unreachable", code="target_unreachable",
                                         field="targetMacs", data={"range": [0.05, 1.0]}))
    assert event["data"] == {"range": [0.05, 1.0]} and event["field"] == "targetMacs"
    json.dumps(event, allow_nan=False)


def test_unknown_codes_are_refused():
    with pytest.raises(ValueError, match="unknown engine error code"):
        EngineInputError("x", code="Bad Code")
    assert all(code.replace("_", "").isalpha() and code.islower() for code in ERROR_CODES)


def test_crashes_become_internal_error_without_their_message():
    event = error_event(FileNotFoundError(2, "No such file", "/srv/tuckerize/jobs/42/scratch/x"))
    assert event["code"] == "internal_error" and "FileNotFoundError" in event["detail"]
    assert "/srv" not in event["detail"]


@pytest.mark.parametrize("text,expected", [
    ("job file '/var/lib/tuckerize/jobs/7/job.json' does not exist", "job file 'job.json' does not exist"),
    ("latency table '/tmp/a b/t.json' is bad", "latency table 't.json' is bad"),
    ("cannot open /srv/models/x.onnx: denied", "cannot open x.onnx: denied"),
    ('dataset "/data/" is empty', 'dataset "<dir>" is empty'),
    ("[ShapeInferenceError] (op_type:Conv) onnx/defs/nn/defs.cc:123: bad kernel",
     "[ShapeInferenceError] (op_type:Conv) bad kernel"),
    ("ratio must be in (0, 1], got 2", "ratio must be in (0, 1], got 2"),
    ("rule 'budget' needs targetMacs/targetParams", "rule 'budget' needs targetMacs/targetParams"),
    ("multi\n  line", "multi line"),
])
def test_public_text_drops_server_paths_and_cxx_locations(text, expected):
    assert public_text(text) == expected


def test_input_errors_sets_the_code_only_where_none_was_given():
    with pytest.raises(EngineInputError) as info, input_errors("invalid_model"):
        raise EngineInputError("cannot read the model")
    assert info.value.code == "invalid_model"
    with pytest.raises(EngineInputError) as info, input_errors("invalid_model"):
        raise EngineInputError("bad table", code="invalid_latency_table")
    assert info.value.code == "invalid_latency_table"


def test_dataset_errors_keep_their_code_whatever_the_stage():
    from tuckerize.data import load_dataset
    with pytest.raises(EngineInputError) as info, input_errors("finetune_failed"):
        load_dataset("builtin:no-such-set")
    assert info.value.code == "invalid_dataset"
