"""Just-in-time approvals: a statement that policy marks ``review`` is held until a named
approver signs a decision, or the timeout passes.

Where it sits: the proxy's session asks policy, gets ``review``, masks the statement and calls
:meth:`Broker.request`; the connection stays open while the request waits. The rest:

- **Request** (:class:`ApprovalRequest`): random id (from a passed-in ``rng``), session,
  identity, target, account, rule, the rule's approver names, the masked statement, the
  SHA-256 of the exact statement bytes (:func:`statement_digest`), created, expires, and the
  rule's grant window. Recorded as ``approval.requested``; announced by webhook
  (:class:`WebhookNotifier`) and listed by ``appliance approvals list``.
- **SignedDecision** (:class:`SignedDecision`): a canonical seven-line body (:mod:`.decision`) inside a
  C2SP signed note (https://c2sp.org/signed-note) signed with the approver's Ed25519 key
  (:class:`appliance.signing.keys.SigningKey`, made by ``appliance keys generate --approver``).
  An auditor checks it with any signed-note tool and the approver's vkey.
- **Acceptance** (:meth:`Broker.submit`): the note verifies under the policy's key for an
  approver the request's rule names, the body names that approver, the request id is
  pending, the statement hash is the held one, and the timeout has not passed. Anything
  else is refused with a :class:`RejectReason` and recorded. The accepted note is stored
  verbatim in the ledger.
- **Outcome** (:class:`Outcome`): granted, denied (approver and reason) or timed out; the
  proxy turns denial and timeout into the protocol's error with :meth:`Outcome.message`.
  If the client disconnects, the waiting task is cancelled and the request withdrawn.
- **Once, or for a window**: a grant releases exactly the held statement. If the rule
  allows a window W > 0, the grant also covers identical statements (same SHA-256, rule,
  target and account) from the *same identity* (the CI job, so a job that reconnects is
  covered; another job is not) until ``created + W``; flows attributed as ``unattributed``
  share a window only within one session. Each covered statement is recorded as
  ``approval.granted`` with ``window_of`` the original request. Denials never carry over.
- **Ledger** (the ``record(type, data)`` callback; data holds only strings, ints, and lists
  of strings): ``approval.requested``, ``approval.granted``, ``approval.denied``,
  ``approval.timeout``, ``approval.rejected``, ``approval.withdrawn``,
  ``approval.notify_failed``. A record is written before the statement is released.
- **Local socket** (:class:`ApprovalServer`, :class:`ApprovalsClient`): Unix stream socket,
  default ``/run/appliance/approvals.sock``, mode 0600 in a 0700 directory, peers checked
  with SO_PEERCRED (uid 0 only); line-delimited JSON (``list``, ``get``, ``decide``).
- **Time** is passed in (:class:`Clock`: :class:`SystemClock`, :class:`ManualClock`).

Wiring (the proxy's owner)::

    broker = Broker(approver_keys=keys, clock=SystemClock(), rng=os.urandom,
                    record=ledger_record, notify=notifier.notify, timeout=policy_timeout)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(notifier.run())
        tg.create_task(ApprovalServer(broker, transport.socket).serve())
        ...  # listeners; a session does: outcome = await broker.request(broker.new_request(...))
"""

from appliance.approvals.broker import (
    DEFAULT_TIMEOUT,
    Broker,
    Outcome,
    RecordFn,
    RejectReason,
    Resolution,
    SubmitResult,
)
from appliance.approvals.client import ApprovalsClient, DecisionAccepted
from appliance.approvals.clock import Clock, ManualClock, SystemClock, format_time, parse_time
from appliance.approvals.config import (
    TRANSPORT_KEYS,
    ApprovalsTransportConfig,
    parse_approvals_transport,
)
from appliance.approvals.decision import (
    SignedDecision,
    format_decision,
    parse_decision,
    sign_decision,
)
from appliance.approvals.errors import (
    ApprovalsError,
    ApprovalsProtocolError,
    ApprovalsSocketError,
    ApprovalsUnavailable,
    ApprovalsUsageError,
    DecisionFormatError,
    DecisionRejected,
    RequestNotFound,
    RequestNotPending,
)
from appliance.approvals.request import (
    UNATTRIBUTED,
    ApprovalRequest,
    RequestState,
    RequestStatus,
    identity_key,
    statement_digest,
)
from appliance.approvals.server import DEFAULT_SOCKET, ApprovalServer
from appliance.approvals.webhook import WebhookNotifier, WebhookTarget

__all__ = [
    "DEFAULT_SOCKET",
    "DEFAULT_TIMEOUT",
    "TRANSPORT_KEYS",
    "UNATTRIBUTED",
    "ApprovalRequest",
    "ApprovalServer",
    "ApprovalsClient",
    "ApprovalsError",
    "ApprovalsProtocolError",
    "ApprovalsSocketError",
    "ApprovalsTransportConfig",
    "ApprovalsUnavailable",
    "ApprovalsUsageError",
    "Broker",
    "Clock",
    "DecisionAccepted",
    "DecisionFormatError",
    "DecisionRejected",
    "ManualClock",
    "Outcome",
    "RecordFn",
    "RejectReason",
    "RequestNotFound",
    "RequestNotPending",
    "RequestState",
    "RequestStatus",
    "Resolution",
    "SignedDecision",
    "SubmitResult",
    "SystemClock",
    "WebhookNotifier",
    "WebhookTarget",
    "format_decision",
    "format_time",
    "identity_key",
    "parse_approvals_transport",
    "parse_decision",
    "parse_time",
    "sign_decision",
    "statement_digest",
]
