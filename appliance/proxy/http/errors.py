"""The answers the appliance gives in the target API's own words (sans-IO).

A Kubernetes client reads a ``Status`` object (``kind: Status``, ``reason`` such as
``Forbidden``, ``code``), S3 clients an XML ``<Error>`` with ``<Code>``, other APIs a JSON
``{"error": {...}}``; each names the appliance's decision id so that the job's log and the
ledger meet.
"""

from __future__ import annotations

import json
from xml.sax.saxutils import escape

from appliance.protocols.http import Headers

_REASONS = {
    400: ("BadRequest", "InvalidRequest"),
    403: ("Forbidden", "AccessDenied"),
    408: ("Timeout", "RequestTimeout"),
    421: ("BadRequest", "InvalidRequest"),
    431: ("RequestEntityTooLarge", "RequestHeaderSectionTooLarge"),
    500: ("InternalError", "InternalError"),
    501: ("BadRequest", "NotImplemented"),
    502: ("ServiceUnavailable", "ServiceUnavailable"),
    503: ("ServiceUnavailable", "ServiceUnavailable"),
}


def error_body(
    status: int,
    message: str,
    *,
    flavor: str,
    decision: str | None = None,
    details: dict[str, str] | None = None,
) -> tuple[Headers, bytes]:
    """Headers (content type and length) and body of an error in ``flavor``: ``kubernetes``,
    ``s3`` or ``json``."""
    kube_reason, s3_code = _REASONS.get(status, ("BadRequest", "InvalidRequest"))
    if flavor == "kubernetes":
        doc: dict[str, object] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": kube_reason,
            "code": status,
        }
        if details:
            doc["details"] = details
        body = json.dumps(doc).encode()
        content_type = "application/json"
    elif flavor == "s3":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'
            + s3_code
            + "</Code><Message>"
            + escape(message)
            + "</Message>"
            + (f"<RequestId>{escape(decision)}</RequestId>" if decision else "")
            + "</Error>"
        ).encode()
        content_type = "application/xml"
    else:
        error: dict[str, object] = {"code": status, "message": message}
        if decision:
            error["decision"] = decision
        body = json.dumps({"error": error}).encode()
        content_type = "application/json"
    return (("content-type", content_type), ("content-length", str(len(body)))), body


__all__ = ["error_body"]
