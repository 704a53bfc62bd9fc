"""One error hierarchy for every layer, and the one table that maps its codes to HTTP and gRPC."""

from __future__ import annotations

from typing import Any


class ServingError(Exception):
    """An error a client sees: a status code, TorchServe's error type name and a message.

    `code` is an HTTP-style status; handlers may choose any code (TorchServe's
    `PredictionException(msg, 599)`), so it is not restricted to the standard ones.
    """

    code: int = 500
    type_name: str = "InternalServerException"

    def __init__(self, message: str, code: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        """TorchServe's error body: `{"code", "type", "message"}`."""
        return {"code": self.code, "type": self.type_name, "message": self.message}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServingError:
        """Rebuild an error sent as data (from a worker) without unpickling anything."""
        err = ServingError(str(data.get("message", "")), int(data.get("code", 500)))
        err.type_name = str(data.get("type", cls.type_name))
        return err


class BadRequest(ServingError):
    code = 400
    type_name = "BadRequestException"


class Unauthorized(ServingError):
    code = 401
    type_name = "InvalidKeyException"  # TorchServe's name (it answers 400; 401 is HTTP's)


class Forbidden(ServingError):
    code = 403
    type_name = "ModelAPIDisabledException"


class NotFound(ServingError):
    code = 404
    type_name = "ResourceNotFoundException"


class ModelNotFound(NotFound):
    type_name = "ModelNotFoundException"


class ModelVersionNotFound(NotFound):
    type_name = "ModelVersionNotFoundException"


class MethodNotAllowed(ServingError):
    code = 405
    type_name = "MethodNotAllowedException"


class Conflict(ServingError):
    code = 409
    type_name = "ConflictStatusException"


class PayloadTooLarge(ServingError):
    code = 413
    type_name = "RequestEntityTooLargeException"


class UriTooLong(ServingError):
    code = 414
    type_name = "UriTooLongException"


class HeadersTooLarge(ServingError):
    code = 431
    type_name = "RequestHeaderFieldsTooLargeException"


class ClientCancelled(ServingError):
    """The client went away (closed the connection, cancelled the call) before its answer:
    the work was withdrawn. Nobody reads an HTTP answer then; gRPC says CANCELLED. 499 is
    nginx's "client closed request", the code logs and metrics see."""

    code = 499
    type_name = "ClientCancelledException"


class InternalError(ServingError):
    code = 500
    type_name = "InternalServerException"


class WorkerDied(ServingError):
    """The worker holding the request exited; TorchServe answers 500, we say 502 (documented)."""

    code = 502
    type_name = "WorkerDiedException"


class NotStarted(WorkerDied):
    """A batch that waited in a worker's socket behind the one it was running when that worker
    died or was replaced: its handler never saw it, so routing queues its requests again (a
    client only sees this if no queue takes them back)."""


class ServiceUnavailable(ServingError):
    code = 503
    type_name = "ServiceUnavailableException"


class ResponseTimeout(ServingError):
    """The model's `response_timeout` passed; TorchServe answers 500, we say 504 (documented)."""

    code = 504
    type_name = "RequestTimeoutException"


class InsufficientStorage(ServingError):
    code = 507
    type_name = "InsufficientStorageException"


class ArchiveError(BadRequest):
    """A model archive that cannot be read or would write outside its directory."""

    type_name = "InvalidModelArchiveException"


class ConfigError(ValueError):
    """A malformed or unknown setting at start-up: the server does not start."""


def http_status(code: int) -> int:
    """The HTTP status for an error code; codes outside HTTP's range become 500."""
    return code if 100 <= code <= 599 else 500


# TorchServe's gRPC mapping (frontend GrpcUtils), by HTTP status.
_GRPC_BY_HTTP = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def grpc_status_name(code: int) -> str:
    """The gRPC status name for an error code (other 4xx INVALID_ARGUMENT, 5xx INTERNAL)."""
    if code in _GRPC_BY_HTTP:
        return _GRPC_BY_HTTP[code]
    if 400 <= code < 500:
        return "INVALID_ARGUMENT"
    return "INTERNAL"
