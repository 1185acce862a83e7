"""Credentials never leave the process: `redact_text` is the one place a URI, or a text holding URIs (a study file,
a param, an error message), is made safe to print or log. `redact_uri` is the same filter, named for one URI.

A study's searched values go further (`hide_credentials`): each string that holds a credential is replaced, at load,
by a reference (its masked text and " (secret N)"), so what Tune writes (params.json, result.json, the experiment
state, trial folder names) and what is named after a trial (run names, tags, console lines) never holds it; the
trial process gets the real values through the study runtime (the object store) and `reveal_credentials` puts them
back just before the trial's config is built."""
from __future__ import annotations

import re
from typing import Any

MASK = "***"
# scheme://user:password@ or scheme://token@; greedy up to the last '@' before the path, so a password that holds
# an '@' is masked whole. Anything but '/' and whitespace may be in it: RFC 3986 allows ' ! $ & ( ) * + , ; = in a
# userinfo, and people paste passwords with '"', '#', '?' and '\' unencoded (a quote must not end the mask early)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s]+)@")
_KEY_PAIR_SCHEMES = ("s3://", "s3a://", "s3n://", "gs://", "gcs://", "abfs://", "abfss://")
# query parameters that carry secrets in storage/tracking URIs (pyarrow's s3 options, presigned URLs, tokens). The
# value runs to '&' or whitespace; a quote ends it only where a quoted string would (before , ; ) ] } or the end),
# so a value holding a quote is masked whole and a URI inside JSON or a repr keeps its closing quote
_QUERY_SECRET = re.compile(r"(?P<key>[?&][A-Za-z0-9_.-]*(?:secret|token|password|passwd|signature|credential|"
                           r"access_key|session)[A-Za-z0-9_.-]*=)(?:[^&\s'\"]|['\"](?![,;)\]}]|\s|$))+", re.I)


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


def hide_credentials(value: Any, table: dict[str, str]) -> Any:
    """`value` (a YAML value: str, list, dict, number...) with each string that holds a credential replaced by its
    reference, '<masked text> (secret N)'; `table` gets reference -> the string (one reference per distinct string,
    numbered in the order met, so the same study gives the same references in every process)."""
    if isinstance(value, str):
        shown = redact_text(value)
        if shown == value:
            return value
        for ref, real in table.items():
            if real == value:
                return ref
        ref = f"{shown} (secret {len(table) + 1})"
        table[ref] = value
        return ref
    if isinstance(value, dict):
        return {k: hide_credentials(v, table) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(hide_credentials(v, table) for v in value)
    return value


def reveal_credentials(value: Any, table: dict[str, str]) -> Any:
    """The inverse of hide_credentials: each reference in `value` (nested lists/dicts) back to the real string."""
    if not table:
        return value
    if isinstance(value, str):
        return table.get(value, value)
    if isinstance(value, dict):
        return {k: reveal_credentials(v, table) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(reveal_credentials(v, table) for v in value)
    return value
