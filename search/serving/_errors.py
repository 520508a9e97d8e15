"""One error schema for every answer a server gives that is not a success.

The body is OpenAI's error object, so OpenAI clients (and people) read csearch's own 4xx,
FastAPI's validation errors, invalid JSON, 404/405, the limits' 413/408 and a 500 alike:

    {"error": {"message": str, "type": str, "param": str | None, "code": int | str | None}}

`code` is the HTTP status unless a route passes its own (OpenAI uses strings such as
"context_length_exceeded"). FastAPI's 422 for a body that fails its model becomes a 400
with this body (OpenAI answers 400 to invalid requests), `param` naming the first field
at fault. Routes either `raise ApiError(...)` or return `error_response(...)`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["ApiError", "error_body", "error_response", "install_error_handlers"]

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error",
          408: "timeout_error", 413: "request_too_large", 500: "internal_error",
          503: "service_unavailable"}


class ApiError(Exception):
    """Raised by a route (or the limits) to answer `status` with the error schema."""

    def __init__(self, status: int, message: str, type_: str | None = None,
                 param: str | None = None, code: int | str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param
        self.code = code

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.param, self.code)


def error_body(status: int, message: str, type_: str | None = None, param: str | None = None,
               code: int | str | None = None) -> dict[str, Any]:
    kind = type_ or _TYPES.get(status, "invalid_request_error" if status < 500 else
                               "internal_error")
    return {"error": {"message": message, "type": kind, "param": param,
                      "code": status if code is None else code}}


def error_response(status: int, message: str, type_: str | None = None,
                   param: str | None = None, code: int | str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The error schema as a response (for routes that return rather than raise)."""
    return JSONResponse(error_body(status, message, type_, param, code), status_code=status,
                        headers=headers)


def _param(loc: Any) -> str | None:
    """The request field at fault, as OpenAI names it: the top-level one (a union's member
    type, such as `prompt.str`, is pydantic's detail, not a field)."""
    parts = [str(p) for p in loc or () if p != "body"]
    return parts[0] if parts else None


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail), headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    param = _param(first.get("loc"))
    message = str(first.get("msg", "invalid request"))
    if first.get("type") == "json_invalid":
        message = "the body is not valid JSON"
    elif param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return error_response(400, message, param=param)


async def _server_error(_: Request, exc: Exception) -> JSONResponse:
    # Starlette logs the traceback after this answer is sent (it re-raises).
    return error_response(500, f"internal server error: {type(exc).__name__}")


def install_error_handlers(app: FastAPI) -> None:
    """Every error answer of `app` in the one schema."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _server_error)
