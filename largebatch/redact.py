"""Credentials never leave the process: `redact_uri` is the one place a URI is made safe to print or log."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

MASK = "***"
# query parameters that carry secrets in storage/tracking URIs (pyarrow's s3 options, presigned URLs, tokens)
_SECRET_QUERY = re.compile(r"(secret|token|password|passwd|signature|credential|access_key|session)", re.I)


# scheme://user:password@ or scheme://token@ anywhere in a text (a YAML file, a param value, an error message)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s@'\"]+)@")
_QUERY_SECRET = re.compile(r"(?P<key>[?&][A-Za-z0-9_.-]*(?:secret|token|password|passwd|signature|credential|"
                           r"access_key|session)[A-Za-z0-9_.-]*=)[^&\s'\"]+", re.I)


def redact_text(text: str) -> str:
    """Every URI credential in a free text masked as redact_uri() masks it (same user kept, secret replaced)."""
    def userinfo(m: re.Match) -> str:
        info = m["userinfo"]
        masked = f"{info.split(':', 1)[0]}:{MASK}" if ":" in info else MASK
        return f"{m['scheme']}{masked}@"

    return _QUERY_SECRET.sub(lambda m: m["key"] + MASK, _USERINFO.sub(userinfo, text))


def redact_uri(uri: str) -> str:
    """'postgresql://user:pw@host/db' -> 'postgresql://user:***@host/db'; secret query values -> ***.
    Strings that are not URIs come back unchanged."""
    if "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{MASK}@{host}"
    query = "&".join(
        f"{k}={MASK}" if _SECRET_QUERY.search(k) else (f"{k}={v}" if sep else k)
        for k, sep, v in (item.partition("=") for item in parts.query.split("&") if item)
    ) if parts.query else ""
    if netloc == parts.netloc and query == parts.query:
        return uri  # nothing secret: keep it byte for byte (urlunsplit would turn sqlite:/// into sqlite:/)
    return (f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
            + (f"#{parts.fragment}" if parts.fragment else ""))
