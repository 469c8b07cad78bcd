"""Policy: what a CI job may do to a protected target, statement by statement.

Where it sits: the PostgreSQL decoder hands each query string to :func:`classify`; the proxy
puts the classification, the flow's identity, the target, database and service account into
a :class:`RequestContext` and asks :meth:`Policy.decide`; it then forwards, refuses (with the
decision's message as the PostgreSQL error) or holds the statement for approval
(:mod:`appliance.approvals`), and records :meth:`Decision.to_record` in the ledger.

- :func:`classify` (``sql -> Classification``): every statement of the string, by its effect
  as the server's own grammar reads it (pglast / libpg_query): a DELETE inside a CTE is a
  delete, EXPLAIN ANALYZE runs its statement, COPY ... PROGRAM runs a shell command, DO and
  CALL are ``unknown`` (a DO block whose PL/pgSQL body has no dynamic SQL has the classes
  of what the body runs, plus ``do``). Relations read and written and functions called are
  extracted. Never raises: unparseable text is ``unknown`` with ``parse_error`` set, and
  ``syntax_error`` (:class:`GrammarError`) when PostgreSQL's grammar rejects it. Cached by
  exact text. :func:`classify_function_call` does the same for a fast-path call by OID. The class vocabulary and groups are :data:`CLASSES` and :data:`GROUPS`.
- SSH (:mod:`appliance.policy._ssh`): :func:`classify_exec` reads an exec command line
  with the shell's quoting rules into one :class:`SshOperation` per command (program,
  arguments, the program sudo runs; ``unknown`` when the shell computes the program);
  :func:`shell_request`, :func:`subsystem_request`, :func:`file_operation` and
  :func:`forward_request` make the other SSH operations statements; rules match them by
  class and with the ``ssh`` matcher.
- :func:`parse_policy` (``Node -> Policy``): the ``policy`` config section, checked, every
  mistake a :class:`~appliance.errors.ConfigError` with key and line.
- :meth:`Policy.decide` (``RequestContext -> Decision``): pure; first matching rule per
  statement, strictest statement wins (deny > review > allow), no match means deny, an
  ``unknown`` statement needs a rule that names ``unknown`` (or a deny).
- ``observe`` mode decides the same and returns ``enforced=False``; :attr:`Policy.warning`
  is the line to log at start and put in every session start entry
  (:meth:`Policy.start_record`).

Public API::

    classify(sql: str, *, standard_conforming_strings: bool = True) -> Classification
    Classification(statements: tuple[StatementClass, ...], classes, reads, writes,
                   functions: frozenset[str], parse_error: str | None).to_record()
    StatementClass(index, text, command, classes, reads, writes, functions, prepared_name)
    parse_policy(node: Node | None, *, targets: Mapping[str, Target]) -> Policy
    Policy(mode, rules, approvers: Mapping[str, VerifierKey], approval_timeout)
        .decide(ctx) -> Decision; .enforced; .warning; .start_record()
    RequestContext(identity: Mapping[str, Any], target: str, database: str | None,
                   account: str, classification: Classification)
    Decision(action, rule, message, approvers, timeout, window, statement_index, classes,
             enforced, statements).lets_through; .to_record()
    classify_exec(command: str) -> Classification        # of SshOperation statements
    shell_request(pty=) / subsystem_request(name) / file_operation(op, cls, paths)
    forward_request(kind, host, port) -> Classification
"""

from appliance.policy._classify import (
    Classification,
    GrammarError,
    StatementClass,
    classify,
    classify_function_call,
    copy_spec,
)
from appliance.policy._config import parse_policy
from appliance.policy._rules import (
    CONFLICT_RULE,
    EMPTY_RULE,
    NO_RULE,
    Decision,
    Glob,
    HttpMatch,
    HttpRequestContext,
    KubeMatch,
    Match,
    Policy,
    RequestContext,
    Rule,
    StatementDecision,
)
from appliance.policy._ssh import (
    SshMatch,
    SshOperation,
    classify_exec,
    file_operation,
    forward_request,
    shell_request,
    subsystem_request,
)
from appliance.policy._vocabulary import CLASSES, EXPLICIT, GROUPS, expand
from appliance.protocols.postgres.copy import CopySpec

__all__ = [
    "CLASSES",
    "CONFLICT_RULE",
    "EMPTY_RULE",
    "EXPLICIT",
    "GROUPS",
    "NO_RULE",
    "Classification",
    "CopySpec",
    "Decision",
    "Glob",
    "GrammarError",
    "HttpMatch",
    "HttpRequestContext",
    "KubeMatch",
    "Match",
    "Policy",
    "RequestContext",
    "Rule",
    "SshMatch",
    "SshOperation",
    "StatementClass",
    "StatementDecision",
    "classify",
    "classify_exec",
    "classify_function_call",
    "copy_spec",
    "expand",
    "file_operation",
    "forward_request",
    "parse_policy",
    "shell_request",
    "subsystem_request",
]
