"""How the conditional-write check reads a store's answers (``location.require_conditional_writes``), one answer
at a time from a stubbed S3 client: what counts as the store evaluating ``If-None-Match``, and what is refused."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from model_ops import location
from model_ops.errors import UsageError
from model_ops.location import Location

ROOT = Location("s3://bucket/team/registry")


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> Any:
    client = boto3.client(
        "s3", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s", endpoint_url="http://s3.test"
    )
    monkeypatch.setattr(location, "s3_client", lambda: client)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://s3.test")
    location._CONDITIONAL_WRITES_SEEN.clear()
    with Stubber(client) as stub:
        yield stub
        stub.assert_no_pending_responses()
    location._CONDITIONAL_WRITES_SEEN.clear()


def _put(stub: Stubber, error: tuple[str, int] | None = None) -> None:
    expected = {
        "Bucket": "bucket",
        "Key": "team/registry/conditional-write-probe",
        "Body": ANY,
        "IfNoneMatch": "*",
    }
    if error is None:
        stub.add_response("put_object", {}, expected)
    else:
        stub.add_client_error("put_object", error[0], http_status_code=error[1], expected_params=expected)


@pytest.mark.parametrize(
    "answers",
    [
        [None, ("PreconditionFailed", 412)],  # the first probe of a bucket: stored, then refused
        [("PreconditionFailed", 412)],  # the probe is there already: one request
        [("ConditionalRequestConflict", 409)],  # another process's probe at the same moment
    ],
    ids=["first", "existing", "concurrent"],
)
def test_a_store_that_evaluates_the_condition_passes_once_per_process(stubbed: Stubber, answers: list) -> None:
    for answer in answers:
        _put(stubbed, answer)
    location.require_conditional_writes(ROOT)
    location.require_conditional_writes(ROOT)  # remembered: no second round of requests


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        ([None, None], "ignoring If-None-Match"),
        ([("NotImplemented", 501)], "501 Not Implemented"),
        ([("OperationAborted", 409)], "409 OperationAborted"),  # a 409 that is not about the condition
        ([("AccessDenied", 403)], "403 AccessDenied"),
    ],
    ids=["ignored", "not-implemented", "other-409", "denied"],
)
def test_a_store_that_does_not_is_refused_with_one_line(stubbed: Stubber, answers: list, message: str) -> None:
    for answer in answers:
        _put(stubbed, answer)
    with pytest.raises(UsageError, match=message):
        location.require_conditional_writes(ROOT)
    assert not location._CONDITIONAL_WRITES_SEEN


def test_a_local_root_needs_no_check_and_parents_stay_where_they_should() -> None:
    location.require_conditional_writes(Location("/tmp/anywhere"))  # no S3 client is even made
    assert Location("s3://b/x/y").parent == Location("s3://b/x")
    assert Location("s3://b/x").parent == Location("s3://b")
    assert Location("s3://b").parent == Location("s3://b")
    assert Location("/a/b").parent == Location("/a") and Location("/a").parent == Location("/")
