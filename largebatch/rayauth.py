"""Joining a Ray cluster (`--address`/RAY_ADDRESS): is it reachable, and does it take our token?

Ray 2.60 keeps token auth off for clusters started with `ray start` unless RAY_AUTH_MODE=token (2.61 turns it on for
all). A client without the cluster's token, or with another one, would make `ray.init` log a C++ warning a second for
about 20 s and then raise `ray.exceptions.AuthenticationError` (a RayError); here it is one line before anything
runs: a bounded TCP check, then the GCS's GetClusterId call with the header Ray would send. raylib.py calls these.
Ray's private auth API and the GCS call are reached through raycompat.py.
"""
from __future__ import annotations

import os
import socket
from typing import Optional

from largebatch import raycompat
from largebatch.errors import BadInput


def _match_auth_mode() -> None:
    """For another cluster, RAY_AUTH_MODE decides; when it is unset, a token in ~/.ray/auth_token (or
    RAY_AUTH_TOKEN/RAY_AUTH_TOKEN_PATH) turns token auth on, which is what Ray does for its own local clusters."""
    if os.environ.get("RAY_AUTH_MODE") is None:
        raycompat.enable_token_auth_if_token_found()


AUTH_FIX = ("export RAY_AUTH_MODE=token and give this client the cluster's token, the one the head was started with: "
            "RAY_AUTH_TOKEN=<token>, RAY_AUTH_TOKEN_PATH=<file>, or the file ~/.ray/auth_token")


def _auth_error(address: str, sent_token: bool) -> BadInput:
    what = ("rejected this client's token (a different token)" if sent_token
            else "requires a token and this client sent none (RAY_AUTH_MODE is not token)")
    return BadInput(f"the Ray cluster at {address!r} {what}; {AUTH_FIX}", field="--address")


def _connect_error(e: BaseException, address: str) -> BadInput:
    chain: list[BaseException] = []
    cur: Optional[BaseException] = e
    while cur is not None:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    if any("auth" in type(c).__name__.lower() or "InvalidAuthToken" in str(c) for c in chain):
        try:
            sent = _token_header() is not None
        except BadInput as no_token:  # token mode with no token: that is the line to show
            return no_token
        return _auth_error(address, sent_token=sent)
    return BadInput(f"cannot reach a Ray cluster at {address!r}; start one with `ray start --head` or drop "
                    f"--address to run locally", field="--address")


def _token_header() -> Optional[dict[str, str]]:
    """What Ray would send: the auth header when RAY_AUTH_MODE is token and a token is found, else None."""
    if not raycompat.token_auth_enabled():
        return None
    header = raycompat.token_http_header()
    if header is None:
        raise BadInput(f"RAY_AUTH_MODE=token but no token was found for the cluster at the address given; "
                       f"{AUTH_FIX}", field="--address")
    return header


def _check_auth(address: str, timeout_s: float = 5.0) -> None:
    """Ask the cluster's GCS for its id with the token Ray would send, before ray.init: a missing or wrong token is
    one line here, where ray.init would log a C++ warning a second for 20 s and then fail."""
    if "://" in address or address == "auto" or ":" not in address:
        return
    import grpc

    header = _token_header()
    try:
        raycompat.gcs_get_cluster_id(address, header, timeout_s)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise _auth_error(address, sent_token=header is not None) from None
        # anything else (not a GCS, a version without this call, slow): ray.init decides, as before


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A bounded TCP check of a GCS address (host:port) before ray.init, which would retry for minutes."""
    if "://" in address or address == "auto" or ":" not in address:
        return  # ray:// client addresses and "auto" are Ray's to resolve
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot reach a Ray cluster at {address!r} ({getattr(e, 'strerror', None) or e}); start one "
                       f"with `ray start --head` or drop --address to run locally", field="--address") from None
