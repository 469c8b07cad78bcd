"""The blocking client of the approvals socket, used by ``appliance approvals``.

One connection per call (the protocol is in :mod:`appliance.approvals.server`). Failures
are typed: cannot reach the socket -> ApprovalsUnavailable; the answer breaks the protocol
-> ApprovalsProtocolError; the appliance refused a decision -> DecisionRejected.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path

from appliance.approvals.errors import (
    ApprovalsError,
    ApprovalsProtocolError,
    ApprovalsUnavailable,
    DecisionRejected,
    RequestNotFound,
)
from appliance.approvals.request import RequestStatus
from appliance.approvals.server import DEFAULT_SOCKET

__all__ = ["ApprovalsClient", "DecisionAccepted"]

# A list answer may hold many requests, each up to a statement's size: allow more than a line
# the server accepts, but not without bound.
_MAX_RESPONSE = 64 * 1024 * 1024


@dataclass(frozen=True)
class DecisionAccepted:
    """The appliance accepted a decision and released (or refused) the held statement."""

    request_id: str
    decision: str
    approver: str
    detail: str


class ApprovalsClient:
    """Talks to the approvals socket at ``path``; ``timeout`` bounds each call in seconds."""

    def __init__(self, path: Path = DEFAULT_SOCKET, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def list_requests(self) -> list[RequestStatus]:
        """The pending requests."""
        answer = self._ok(self._call({"op": "list"}))
        requests = answer.get("requests")
        if not isinstance(requests, list) or not all(isinstance(r, dict) for r in requests):
            raise ApprovalsProtocolError("'requests' must be a list of objects")
        return [RequestStatus.from_dict(r) for r in requests]

    def get(self, request_id: str) -> RequestStatus:
        """One request, pending or recently closed. Raises RequestNotFound."""
        answer = self._call({"op": "get", "id": request_id})
        if answer.get("code") == "not-found":
            raise RequestNotFound(str(answer.get("error")))
        request = self._ok(answer).get("request")
        if not isinstance(request, dict):
            raise ApprovalsProtocolError("'request' must be an object")
        return RequestStatus.from_dict(request)

    def decide(self, note: str) -> DecisionAccepted:
        """Send a signed decision. Raises DecisionRejected if the appliance refuses it."""
        answer = self._call({"op": "decide", "note": note})
        if answer.get("rejected") is True:
            raise DecisionRejected(str(answer.get("code")), str(answer.get("error")))
        answer = self._ok(answer)
        fields = [answer.get(k) for k in ("id", "decision", "approver", "detail")]
        if not all(isinstance(f, str) for f in fields) or answer.get("accepted") is not True:
            raise ApprovalsProtocolError("malformed answer to a decision")
        request_id, decision, approver, detail = (str(f) for f in fields)
        return DecisionAccepted(request_id, decision, approver, detail)

    # -- the wire ------------------------------------------------------------------------------

    @staticmethod
    def _ok(answer: dict[str, object]) -> dict[str, object]:
        if answer.get("ok") is True:
            return answer
        code, error = answer.get("code"), answer.get("error")
        if code == "forbidden":
            raise ApprovalsUnavailable(f"the appliance refused this connection: {error}")
        raise ApprovalsError(f"the appliance answered {code}: {error}")

    def _call(self, message: dict[str, object]) -> dict[str, object]:
        data = json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"
        chunks: list[bytes] = []
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(self.path))
                sock.sendall(data)
                size = 0
                while not chunks or not chunks[-1].endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > _MAX_RESPONSE:
                        raise ApprovalsProtocolError("answer too long")
        except FileNotFoundError:
            raise ApprovalsUnavailable(
                f"no approvals socket at {self.path}: is the appliance running?"
            ) from None
        except PermissionError:
            raise ApprovalsUnavailable(
                f"permission denied on {self.path}: the approvals socket is for root only"
            ) from None
        except TimeoutError:
            raise ApprovalsUnavailable(
                f"no answer from {self.path} within {self.timeout:g}s"
            ) from None
        except OSError as exc:
            raise ApprovalsUnavailable(f"cannot talk to {self.path}: {exc}") from None
        raw = b"".join(chunks)
        if not raw.endswith(b"\n"):
            raise ApprovalsProtocolError("the appliance closed the connection without an answer")
        try:
            answer = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ApprovalsProtocolError("the answer is not JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
            raise ApprovalsProtocolError("the answer is not an object with 'ok'")
        return answer
