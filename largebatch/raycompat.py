"""Every use of Ray's private API, each with the Ray 2.60 fact it relies on, behind one version guard.

Ray's private modules (`ray._private`, `ray._raylet`, `ray.*._internal`) and its GCS gRPC API change between
releases without notice. Each touch is a small function here that first calls `require_supported_ray()`: on a Ray
this module was not written for, that is one error naming the installed version, the supported one and the fix,
not an AttributeError deep inside Ray. Public Ray APIs are used directly by the modules that need them.
tests/unit/test_raycompat.py checks that no other module of the package imports a private Ray module.

Ray is imported inside the functions, never at module level: importing its internals costs start-up.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

from largebatch.errors import BadInput

SUPPORTED_RAY = "2.60"  # the release series (major.minor) whose internals the functions below were written against
RAY_PIN = "ray[train,tune,default]==2.60.0"  # the pin in pyproject.toml


class UnsupportedRay(BadInput):
    """The installed Ray is not the one this module was written for (one line; the CLI exits 2)."""


def installed_ray_version() -> str:
    import ray

    return str(ray.__version__)


def require_supported_ray(what: str) -> None:
    """Raise UnsupportedRay unless the installed Ray is of the SUPPORTED_RAY series; `what` names the private use."""
    version = installed_ray_version()
    if ".".join(version.split(".")[:2]) != SUPPORTED_RAY:
        raise UnsupportedRay(f"Ray {version} is installed, but largebatch was written for Ray {SUPPORTED_RAY}.x: it "
                             f"uses Ray internals that change between releases ({what}); install the supported "
                             f"Ray with `pip install '{RAY_PIN}'`")


# ---- Tune over Train V2 (tune/trainable.py)

def wait_for_tune_queue(timeout_s: float = 30.0) -> None:
    """Workaround for a Tune-over-Train-V2 hang (docs/design.md §8): wait until the trial session's result queue is
    drained, then give Tune a second.

    Ray 2.60 fact (ray/tune/integration/ray_train.py `TuneReportCallback`, ray/train/_internal/session.py
    `_TrainSession._inter_actor_queue`): each Train result reaches the Tune trial's session through a size-1 queue,
    which can race the end-of-run marker and leave a finished trial RUNNING forever."""
    require_supported_ray("the Tune trial session's result queue")
    try:
        from ray.train._internal.session import get_session

        session = get_session()
        q = session._inter_actor_queue if session is not None else None
        deadline = time.time() + timeout_s
        while q is not None and not q.empty() and time.time() < deadline:
            time.sleep(0.1)
    except Exception:  # the queue could not be read: fall back to the sleep alone
        pass
    time.sleep(1.0)


# ---- an in-process trial's failed checkpoint report (train/persist.py TuneBackend)

def save_tune_report_counters() -> Callable[[], None]:
    """The function that puts the Tune trial session's report counters back where they are now.

    Ray 2.60 fact (ray/train/_internal/session.py `_TrainSession.report`, which `ray.tune.report` calls): the
    checkpoint is copied to storage inside report(), in this process, before anything is queued for the driver. A
    copy that fails raises out of report() (pyarrow's OSError; RuntimeError from `_check_validation_file`) after two
    counters moved: `iteration` (`_auto_fill_metrics`: Tune's training_iteration, which ASHA's rungs count) and
    `storage.current_checkpoint_index` (`_update_checkpoint_index`: the checkpoint folder's number). The driver's
    copy of that index moves only for a checkpoint it receives (tune/experiment/trial.py `Trial.on_checkpoint`), and
    a restarted trial continues from the driver's. So a failed report puts both counters back before the epoch is
    reported again without its checkpoint: the same training_iteration, and the next checkpoint gets the folder the
    failed one would have had (overwriting whatever part of it was copied), as the driver expects."""
    require_supported_ray("the Tune trial session's report counters")
    from ray.train._internal.session import get_session

    session = get_session()
    assert session is not None  # called inside a Tune trial only
    before = (session.iteration, session.storage.current_checkpoint_index)

    def restore() -> None:
        session.iteration, session.storage.current_checkpoint_index = before

    return restore


# ---- token auth (rayauth.py joining a cluster, raylib.py the local head)

def enable_token_auth_if_token_found() -> None:
    """Turn token auth on for this process when a token is found (~/.ray/auth_token, RAY_AUTH_TOKEN or
    RAY_AUTH_TOKEN_PATH) and RAY_AUTH_MODE is unset.

    Ray 2.60 fact (ray/_private/authentication/authentication_token_setup.py
    `maybe_enable_token_auth_if_token_available`): with RAY_AUTH_MODE unset and a token found it turns token mode on
    for this process, as Ray does for its own local clusters; `warn_if_disabled=False` keeps it quiet when none is."""
    require_supported_ray("ray._private.authentication")
    from ray._private.authentication import authentication_token_setup as auth

    auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def token_auth_enabled() -> bool:
    """Whether this process runs with RAY_AUTH_MODE=token (as Ray read it; see reload_auth_config)."""
    require_supported_ray("ray._raylet's authentication mode")
    # not in Ray's _raylet.pyi stub:
    from ray._raylet import AuthenticationMode, get_authentication_mode  # type: ignore[attr-defined]

    return bool(get_authentication_mode() == AuthenticationMode.TOKEN)


def token_http_header() -> Optional[dict[str, str]]:
    """The auth header Ray would send with this process's token, or None when it finds no token.

    Ray 2.60 fact (ray/_raylet `AuthenticationTokenLoader`): in token mode with no token, `has_token()` raises
    `ray.exceptions.AuthenticationError` instead of returning False."""
    require_supported_ray("ray._raylet's AuthenticationTokenLoader")
    from ray._raylet import AuthenticationTokenLoader  # type: ignore[attr-defined]  # not in Ray's _raylet.pyi stub
    from ray.exceptions import AuthenticationError

    loader = AuthenticationTokenLoader.instance()
    try:
        found = loader.has_token()
    except AuthenticationError:  # Ray's own way of saying "token mode, no token"
        found = False
    if not found:
        return None
    return dict(loader.get_token_for_http_header())


def reload_auth_config() -> None:
    """Make Ray read the auth mode and the token from the environment again.

    Ray 2.60 fact (ray/_raylet `Config`, `AuthenticationTokenLoader`): both are cached per process; `Config.initialize`
    and `AuthenticationTokenLoader.reset_cache` drop the cache."""
    require_supported_ray("ray._raylet's Config and AuthenticationTokenLoader")
    # not in Ray's _raylet.pyi stub:
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def gcs_get_cluster_id(address: str, header: Optional[dict[str, str]], timeout_s: float) -> None:
    """Ask the GCS at host:port for its cluster id, sending `header`; a refusal raises grpc.RpcError (an
    UNAUTHENTICATED one for a missing or wrong token).

    Ray 2.60 fact (ray/core/generated/gcs_service.proto `NodeInfoGcsService.GetClusterId`): the first call a client
    makes; under token auth the GCS checks the token on it. `ray.init` with a missing or wrong token logs a C++
    warning a second for about 20 s before it raises, so this call answers first."""
    require_supported_ray("the GCS's GetClusterId call")
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    request = gcs_service_pb2.GetClusterIdRequest()  # type: ignore[attr-defined]  # generated module, no stubs
    with grpc.insecure_channel(address) as channel:
        gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
            request, timeout=timeout_s, metadata=tuple((header or {}).items()))


# ---- the light local head (raylib.py)

def drop_client_server(ray_params: Any) -> None:
    """Called from the RAY_START_HOOK of the light local head: with no port the Ray client server is not started.

    Ray 2.60 fact (ray/scripts/scripts.py `start`): `ray start` starts the Ray client server whenever its
    dependencies are installed and has no flag against it (a port of 0 is refused); before any process starts it
    calls the function named by RAY_START_HOOK with its RayParams (ray/_private/parameter.py)."""
    require_supported_ray("ray start's RayParams")
    ray_params.ray_client_server_port = None
