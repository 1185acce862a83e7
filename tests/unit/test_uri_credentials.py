"""Credentials inside URIs: s3://ACCESS_KEY:SECRET_KEY@bucket (pyarrow's form, which Ray's storage reads) works for
our own S3 calls and never shows; a password in an endpoint URL or --mlflow URI is masked in every message."""
from __future__ import annotations

import pytest

from largebatch import s3
from largebatch.errors import BadInput
from largebatch.redact import redact_text

KEY, SECRET = "AKIAEXAMPLEKEY", "s3cr3t/with+chars"
URI = f"s3://{KEY}:{SECRET.replace('/', '%2F').replace('+', '%2B')}@lb-runs/studies"


def test_keys_in_an_s3_uri_are_not_the_bucket_and_reach_boto3():
    assert s3.parse_s3_uri(URI) == ("lb-runs", "studies", None)
    assert s3.uri_credentials(URI) == (KEY, SECRET)
    assert s3.uri_credentials("s3://lb-runs/studies") is None
    c = s3.client_for(URI)
    creds = c._request_signer._credentials
    assert (creds.access_key, creds.secret_key) == (KEY, SECRET)


@pytest.mark.parametrize("text, shown", [
    (URI, "s3://***@lb-runs/studies"),  # the access key id goes too
    ("postgresql://lb:pw@db/m", "postgresql://lb:***@db/m"),  # a database user stays readable
    ("s3://b/p?endpoint_override=http://minio:pw@127.0.0.1:9000", "s3://b/p?endpoint_override=http://minio:***@127.0.0.1:9000"),
])
def test_redact_masks_uri_keys(text, shown):
    assert redact_text(text) == shown


def test_an_unreachable_s3_endpoint_error_never_shows_the_keys(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    uri = URI + "?endpoint_override=http://minio:pa55w0rd-xyz@127.0.0.1:9"
    with pytest.raises(BadInput) as e:
        s3.preflight_s3(uri)
    msg = str(e.value)
    assert "cannot reach the S3 endpoint" in msg and "s3://***@lb-runs/studies" in msg
    assert KEY not in msg and "s3cr3t" not in msg and "pa55w0rd" not in msg


def test_an_aborted_study_s_reason_tag_is_redacted(tmp_path):
    from largebatch.tracking import Tracker
    from largebatch.tune.abort import abort_study as _abort

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = tracker.experiment_id("st")
    parent = tracker.start_run(exp, "study")
    err = _abort(tracker, exp, "st", parent, RuntimeError("API request to http://lb:pa55w0rd-xyz@h:5000 failed"), None)
    reason = tracker.client.get_run(parent).data.tags["reason"]
    assert "pa55w0rd" not in reason and "lb:***@h:5000" in reason
    assert "pa55w0rd" not in redact_text(str(err))
