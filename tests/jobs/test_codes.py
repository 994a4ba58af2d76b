"""Error codes: one enum whose values are the strings rows, sidecars and events always held."""

from __future__ import annotations

import json

import pipeline.errors
from daemon.jobs.codes import ErrorCode


def test_codes_read_and_serialise_as_the_strings_stored_before():
    assert ErrorCode("poison_job") is ErrorCode.POISON_JOB
    assert json.dumps({"code": ErrorCode.EMPTY_FILE}) == '{"code": "empty_file"}'
    assert all(code.value == code.name.lower() for code in ErrorCode)


def test_every_code_the_pipeline_reports_is_a_known_code():
    errors = [cls for cls in vars(pipeline.errors).values()
              if isinstance(cls, type) and issubclass(cls, pipeline.errors.PipelineError)]
    assert len(errors) >= 4
    assert {cls.code for cls in errors} <= set(ErrorCode)
