"""Credentials never leave the process: `redact_text` is the one place a URI, or a text holding URIs (a study file,
a param, an error message), is made safe to print or log. `redact_uri` is the same filter, named for one URI."""
from __future__ import annotations

import re

MASK = "***"
# scheme://user:password@ or scheme://token@; greedy up to the last '@' before the path, so a password that holds
# an '@' is masked whole
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s'\"]+)@")
_KEY_PAIR_SCHEMES = ("s3://", "s3a://", "s3n://", "gs://", "gcs://", "abfs://", "abfss://")
# query parameters that carry secrets in storage/tracking URIs (pyarrow's s3 options, presigned URLs, tokens)
_QUERY_SECRET = re.compile(r"(?P<key>[?&][A-Za-z0-9_.-]*(?:secret|token|password|passwd|signature|credential|"
                           r"access_key|session)[A-Za-z0-9_.-]*=)[^&\s'\"]+", re.I)


def redact_text(text: str) -> str:
    """'postgresql://user:pw@host/db' -> 'postgresql://user:***@host/db' (the user kept), 'http://token@host' ->
    'http://***@host', 's3://KEY:SECRET@bucket' -> 's3://***@bucket', secret query values -> ***; everything else
    byte for byte."""
    def userinfo(m: re.Match) -> str:
        info = m["userinfo"]
        # s3://ACCESS_KEY:SECRET_KEY@bucket (pyarrow's form): the access key id goes too
        keep_user = ":" in info and m["scheme"].lower() not in _KEY_PAIR_SCHEMES
        masked = f"{info.split(':', 1)[0]}:{MASK}" if keep_user else MASK
        return f"{m['scheme']}{masked}@"

    return _QUERY_SECRET.sub(lambda m: m["key"] + MASK, _USERINFO.sub(userinfo, text))


redact_uri = redact_text
