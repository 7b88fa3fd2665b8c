"""HTTP errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from ..errors import ContextOverflowError, FslmError


class APIError(Exception):
    """An answer other than 2xx, with the fields of OpenAI's error object."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def from_fslm_error(exc: FslmError) -> APIError:
    """The runtime's typed errors as HTTP answers: bad input 400 (a context
    overflow with its token counts in the message), runtime failures 500."""
    if isinstance(exc, ContextOverflowError):
        return APIError(400, str(exc), "invalid_request_error", "messages", "context_length_exceeded")
    if exc.exit_code == 2:
        return APIError(400, str(exc), "invalid_request_error", None, "invalid_input")
    return APIError(500, str(exc), "server_error", None, "runtime_failure")


def internal_error() -> APIError:
    return APIError(500, "internal server error (the server log has the details)", "server_error", None, "internal")
