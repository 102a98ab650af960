"""The errors services raise, each with the machine-readable ``code`` of the contract.

The web layer maps them to problem+json once (``bot.web.problems``); the CLI prints them.
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "Forbidden",
    "GatewayError",
    "InvalidInput",
    "NotFound",
    "PayloadTooLarge",
    "Unauthorized",
    "problem_body",
]


class GatewayError(Exception):
    status = 400
    title = "Bad request"

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail

    def problem(self) -> dict[str, object]:
        """The RFC 9457 body for this error (also stored for Idempotency-Key replays)."""
        return problem_body(self.status, self.code, self.detail, self.title)


def problem_body(status: int, code: str, detail: str, title: str) -> dict[str, object]:
    return {"type": f"urn:consentgate:problem:{code}", "title": title, "status": status,
            "detail": detail, "code": code}


class InvalidInput(GatewayError):
    status = 422
    title = "Invalid input"


class Conflict(GatewayError):
    status = 409
    title = "Conflict"


class Forbidden(GatewayError):
    status = 403
    title = "Forbidden"


class NotFound(GatewayError):
    status = 404
    title = "Not found"


class Unauthorized(GatewayError):
    status = 401
    title = "Unauthorized"


class PayloadTooLarge(GatewayError):
    status = 413
    title = "Payload too large"
