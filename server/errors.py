"""Domain errors of the model server and the ONE table mapping each to (HTTP status, gRPC code).

The core raises these; the REST and gRPC front ends translate them through `ERROR_TABLE` only, so
an error's HTTP status and gRPC status can never drift apart. Codes and HTTP statuses follow TF
Serving (`http_server.cc` ToHTTPStatusCode), plus one deliberate addition: a request over the
configured size limit is 413 over REST (TF Serving has no such limit) and RESOURCE_EXHAUSTED over gRPC.
"""
from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    """tensorflow.error.Code / absl / gRPC status numbers (the same enum everywhere)."""
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class ServingError(Exception):
    """Base of every error a client may see; `message` is sent verbatim."""
    code: Code = Code.UNKNOWN

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Cancelled(ServingError):
    code = Code.CANCELLED


class Unknown(ServingError):
    code = Code.UNKNOWN


class InvalidArgument(ServingError):
    code = Code.INVALID_ARGUMENT


class DeadlineExceeded(ServingError):
    code = Code.DEADLINE_EXCEEDED


class NotFound(ServingError):
    code = Code.NOT_FOUND


class AlreadyExists(ServingError):
    code = Code.ALREADY_EXISTS


class ResourceExhausted(ServingError):
    code = Code.RESOURCE_EXHAUSTED


class FailedPrecondition(ServingError):
    code = Code.FAILED_PRECONDITION


class Aborted(ServingError):
    code = Code.ABORTED


class OutOfRange(ServingError):
    code = Code.OUT_OF_RANGE


class Unimplemented(ServingError):
    code = Code.UNIMPLEMENTED


class Internal(ServingError):
    code = Code.INTERNAL


class Unavailable(ServingError):
    code = Code.UNAVAILABLE


class DataLoss(ServingError):
    code = Code.DATA_LOSS


class RequestTooLarge(ServingError):
    """The request body or message is larger than --max_request_bytes."""
    code = Code.RESOURCE_EXHAUSTED


# The one table: error class -> (HTTP status, gRPC status code). Front ends use nothing else.
ERROR_TABLE: dict[type[ServingError], tuple[int, Code]] = {
    Cancelled: (499, Code.CANCELLED),
    Unknown: (500, Code.UNKNOWN),
    InvalidArgument: (400, Code.INVALID_ARGUMENT),
    DeadlineExceeded: (504, Code.DEADLINE_EXCEEDED),
    NotFound: (404, Code.NOT_FOUND),
    AlreadyExists: (409, Code.ALREADY_EXISTS),
    ResourceExhausted: (429, Code.RESOURCE_EXHAUSTED),
    FailedPrecondition: (400, Code.FAILED_PRECONDITION),
    Aborted: (409, Code.ABORTED),
    OutOfRange: (400, Code.OUT_OF_RANGE),
    Unimplemented: (501, Code.UNIMPLEMENTED),
    Internal: (500, Code.INTERNAL),
    Unavailable: (503, Code.UNAVAILABLE),
    DataLoss: (500, Code.DATA_LOSS),
    RequestTooLarge: (413, Code.RESOURCE_EXHAUSTED),
}

_BY_CODE: dict[int, type[ServingError]] = {
    code: cls for cls, (_, code) in ERROR_TABLE.items() if cls is not RequestTooLarge
}


def _entry(error: ServingError) -> tuple[int, Code]:
    for cls in type(error).__mro__:  # subclasses (e.g. SignatureNotFound) map as their nearest listed base
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return ERROR_TABLE[Unknown]


def http_status(error: ServingError) -> int:
    """The HTTP status a REST client sees for `error`."""
    return _entry(error)[0]


def grpc_code(error: ServingError) -> Code:
    """The gRPC status code a gRPC client sees for `error`."""
    return _entry(error)[1]


def error_for_code(code: int, message: str) -> ServingError:
    """A domain error for a TensorFlow / absl status code (e.g. from tf.errors.OpError.error_code)."""
    return _BY_CODE.get(code, Unknown)(message)


def as_serving_error(exc: BaseException) -> ServingError:
    """What a client sees for any exception: a ServingError as it is, anything unexpected as INTERNAL.

    Both front ends call this in their one catch-all (the gRPC interceptor, the REST handler), so a bug inside
    a request is INTERNAL / 500 over either protocol, never a dropped connection or a 400.
    """
    if isinstance(exc, ServingError):
        return exc
    return Internal(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
