"""Human renderings of entries: one-line summaries (query, show) and session transcripts
(replay). Pure functions of entries and blob bytes; the CLI does the printing and sleeping.

Known entry types get a tailored line (following the producers' data conventions); unknown
ones are shown as compact JSON, so new types are never hidden.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import orjson

from appliance.ledger import entries as t
from appliance.ledger.entries import Entry, blob_refs, may_have_blob_refs, ts_to_us
from appliance.ledger.recordings import channel_start_us, read_recording
from appliance.ledger.results import cell_text, read_result, result_bytes

BlobLoader = Callable[[str], bytes | None]


class Raw(str):
    """Terminal output for ``replay`` to write as it is, with no newline added (an SSH
    recording)."""


def _short(text: object, width: int = 100) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= width else s[: width - 1] + "…"


def _compact(value: object, width: int = 100) -> str:
    return _short(orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode(), width)


def _ms(us: object) -> str:
    return f"{us / 1000:.1f} ms" if isinstance(us, int) else "?"


def who(identity: Mapping[str, Any] | None, account: str | None = None) -> str:
    """'github acme/app ci.yml/build run 42, pid 1234 psql (/usr/bin/psql), uid 1000'."""
    parts: list[str] = []
    ident = identity or {}
    ci = ident.get("ci")
    if isinstance(ci, dict) and ci:
        bits = [str(ci.get(k)) for k in ("provider", "repository") if ci.get(k)]
        job = "/".join(str(ci[k]) for k in ("workflow", "job") if ci.get(k))
        if job:
            bits.append(job)
        if ci.get("run_id"):
            bits.append(f"run {ci['run_id']}")
        # appliance.identity: which of these a verified CI token states.
        token = ident.get("token")
        if isinstance(token, dict) and token.get("status") == "verified":
            bits.append(f"[verified: {', '.join(ident.get('verified') or [])}]")
        elif isinstance(token, dict) and token.get("status") == "rejected":
            bits.append(f"[claimed; token rejected: {token.get('reason')}]")
        else:
            bits.append("[claimed]")
        if ident.get("mismatch"):
            said = ", ".join(f"{m['field']}={m['claimed']}" for m in ident["mismatch"])
            bits.append(f"[environment claimed {said}]")
        parts.append(" ".join(bits))
    if ident.get("source") == "unattributed":
        parts.append("unattributed")
    proc = []
    if "pid" in ident:
        proc.append(f"pid {ident['pid']}")
    if ident.get("comm"):
        proc.append(str(ident["comm"]))
    if ident.get("exe"):
        proc.append(f"({ident['exe']})")
    if "uid" in ident:
        proc.append(f"uid {ident['uid']}")
    if proc:
        parts.append(" ".join(proc))
    if account:
        parts.append(f"as {account}")
    return ", ".join(parts) if parts else "unknown"


def summarize(obj: Mapping[str, Any], width: int = 100) -> str:
    """One line about an entry's data."""
    d = obj.get("data") or {}
    typ = obj.get("type")
    n = f"#{d['n']} " if isinstance(d.get("n"), int) else ""
    if typ == t.SESSION_START and d.get("protocol") == "ssh":
        return _short(
            f"{d.get('client', '?')} -> {d.get('server', '?')} ssh; "
            f"{who(obj.get('identity'), obj.get('account'))}",
            width,
        )
    if typ == t.RESPONSE and d.get("protocol") == "ssh":
        return _short(n + _ssh_outcome(d), width)
    if typ == t.SESSION_START:
        mode = f" [{d['policy_mode']}]" if d.get("policy_mode") else ""
        return _short(
            f"{d.get('client', '?')} -> {d.get('server', '?')} {d.get('protocol', '')} "
            f"db={d.get('database', '?')} user={d.get('user', '?')}{mode}; "
            f"{who(obj.get('identity'), obj.get('account'))}",
            width,
        )
    if typ == t.STATEMENT:
        params = f" params={d['params']}" if d.get("params") else ""
        return _short(f"{n}{d.get('text', '')}{params}", width)
    if typ == t.RESPONSE:
        err = d.get("error")
        if isinstance(err, dict):
            return _short(f"{n}ERROR {err.get('code', '')} {err.get('message', '')}", width)
        res = d.get("result")
        stored = (
            f", result {res['size']} B stored" if isinstance(res, dict) and "size" in res else ""
        )
        return _short(
            f"{n}{d.get('tag') or 'OK'}: {d.get('rows', 0)} rows, "
            f"{_ms(d.get('duration_us'))}{stored}",
            width,
        )
    if typ == t.POLICY_DECISION:
        enforced = "" if d.get("enforced", True) else " (observe only, not enforced)"
        return _short(f"{n}{d.get('decision', '?')} by rule {d.get('rule', '?')}{enforced}", width)
    if typ == t.MASKING_APPLIED:
        counts = d.get("counts") or {k: v for k, v in d.items() if isinstance(v, int) and k != "n"}
        return _short(f"{n}masked " + ", ".join(f"{k}: {v}" for k, v in counts.items()), width)
    if typ == t.SESSION_END:
        return _short(
            f"{d.get('reason', 'closed')}; {d.get('bytes_in', '?')} B in, "
            f"{d.get('bytes_out', '?')} B out, {_ms(d.get('duration_us'))}",
            width,
        )
    if typ == t.KEY_PUBLISHED:
        return _short(f"key {d.get('vkey', '?')}", width)
    if isinstance(typ, str) and typ.startswith("approval."):
        return _short(_approval(typ, d), width)
    if typ == "session.ready" and "host_key" in d:
        return _short(
            f"{d.get('user', '?')} logged in; upstream as {d.get('upstream_user', '?')} with "
            f"{d.get('auth_method', '?')}, host key {d.get('host_key', '?')}",
            width,
        )
    if typ == "session.ready":
        tls = ", TLS upstream" if d.get("upstream_tls") else ""
        return _short(f"authenticated upstream with {d.get('auth_method', '?')}{tls}", width)
    return _compact(d, width)


def _ssh_outcome(d: Mapping[str, Any]) -> str:
    """How an SSH operation ended: its exit, a refusal, an SFTP status."""
    if d.get("refused"):
        return f"refused (exit {d.get('exit_status', '?')})"
    if "error" in d:
        return f"failed: {d['error']}"
    if "status" in d:
        return f"status {d['status']} {d.get('message', '')}".rstrip()
    end = (
        f"signal {d['exit_signal']}" if "exit_signal" in d else f"exit {d.get('exit_status', '-')}"
    )
    return (
        f"{end}; {d.get('bytes_in', 0)} B in, {d.get('bytes_out', 0)} B out, "
        f"{_ms(d.get('duration_us'))}"
    )


def _approval(typ: str, d: Mapping[str, Any]) -> str:
    """One line about an approval record (see :mod:`appliance.approvals`)."""
    rid = d.get("id", "?")
    reason = f": {d['reason']}" if d.get("reason") else ""
    if typ == "approval.requested":
        approvers = ", ".join(str(a) for a in d.get("approvers") or []) or "?"
        return f"request {rid} by rule {d.get('rule', '?')}: waiting for {approvers} until {d.get('expires', '?')}"
    if typ == "approval.granted":
        if d.get("window_of"):
            return f"request {rid} granted by the window of request {d['window_of']}"
        return (
            f"request {rid} approved by {d.get('approver', '?')}{reason} (signed decision stored)"
        )
    if typ == "approval.denied":
        return f"request {rid} denied by {d.get('approver', '?')}{reason} (signed decision stored)"
    if typ == "approval.timeout":
        return f"request {rid} timed out (expired {d.get('expires', '?')})"
    if typ == "approval.rejected":
        return (
            f"decision for request {rid} rejected ({d.get('reason', '?')}): {d.get('detail', '')}"
        )
    if typ == "approval.withdrawn":
        return f"request {rid} withdrawn: the client disconnected"
    return _compact(d, 200)


def table(entries: Iterable[Entry], *, origins: bool = False) -> Iterator[str]:
    """Rows for ``query``: seq, time, type, session, target, summary (``origins``: the
    log's origin first, for entries of several logs)."""
    head = f"{'ORIGIN':<24}  " if origins else ""
    yield f"{head}{'SEQ':>7}  {'TIME (UTC)':<27}  {'TYPE':<20}  {'SESSION':<12}  {'TARGET':<12}  SUMMARY"
    for e in entries:
        o = e.obj
        where = f"{_short(o['origin'], 24):<24}  " if origins else ""
        yield (
            f"{where}{e.seq:>7}  {o['ts']:<27}  {o['type']:<20}  {_short(o['session'] or '-', 12):<12}  "
            f"{_short(o['target'] or '-', 12):<12}  {summarize(o, 80)}"
        )


def _grid(columns: list[str], rows: list[list[str]], indent: str) -> list[str]:
    cols = columns or [f"col{i + 1}" for i in range(max((len(r) for r in rows), default=0))]
    widths = [len(c) for c in cols]
    cells = [[_short(c, 40) for c in r] for r in rows]
    for r in cells:
        for i, c in enumerate(r[: len(widths)]):
            widths[i] = max(widths[i], len(c))
    out = [indent + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=False))]
    out.append(indent + "-+-".join("-" * w for w in widths))
    for r in cells:
        out.append(indent + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)))
    return out


def transcript(
    entries: Iterable[Entry], load_blob: BlobLoader, *, max_rows: int = 20
) -> Iterator[tuple[int, list[str]]]:
    """A session as (time in µs since the epoch, lines) steps, in recorded order.

    Who connected and as whom, each statement, the policy decision, approvals, masking, and
    each response with its (masked) rows from the result blob.
    """
    start: int | None = None
    for e in entries:
        o, d = e.obj, e.obj["data"]
        now = ts_to_us(o["ts"])
        start = now if start is None else start
        clock = f"[{o['ts'][11:23]} +{(now - start) / 1e6:7.3f}s]"
        typ = o["type"]
        lines: list[str]
        if typ == t.SESSION_START:
            lines = [
                f"{clock} session {o['session']} to {o['target'] or d.get('server', '?')}",
                f"    who:  {who(o['identity'], o['account'])}",
                f"    conn: {summarize(o, 200).split(';')[0]}",
            ]
        elif typ == t.STATEMENT:
            text = str(d.get("text", ""))
            lines = [
                f"{clock} {_prompt(d)} " + text.splitlines()[0] if text else f"{clock} (empty)"
            ]
            lines += ["        " + ln for ln in text.splitlines()[1:]]
            if d.get("params"):
                lines.append(f"        params: {d['params']}")
        elif typ == t.RESPONSE and d.get("protocol") == "ssh":
            yield from _terminal(o, load_blob)
            lines = [f"{clock}   <- {summarize(o, 200)}"]
        elif typ == t.RESPONSE:
            lines = [f"{clock}   <- {summarize(o, 200)}"]
            res = d.get("result")
            if isinstance(res, dict) and isinstance(res.get("sha256"), str):
                blob = result_bytes(d, load_blob)
                if blob is None:
                    lines.append("        (result blob missing)")
                else:
                    for result in read_result(blob, max_rows):
                        rows = [[cell_text(c) for c in row] for row in result.rows]
                        if result.copy is not None:
                            lines.append(f"        COPY {result.copy}:")
                            lines += ["        " + r[0] for r in rows]
                        else:
                            lines += _grid(result.columns, rows, "        ")
                        if result.total > len(rows):
                            lines.append(f"        ... {result.total - len(rows)} more rows")
        elif typ == t.POLICY_DECISION:
            lines = [f"{clock}   policy: {summarize(o, 200)}"]
        elif typ.startswith("approval."):
            lines = [f"{clock}   {typ.replace('.', ' ')}: {_approval(typ, d)}"]
        elif typ == t.SESSION_END:
            lines = [f"{clock} session ended: {summarize(o, 200)}"]
        else:
            lines = [f"{clock}   {typ}: {summarize(o, 200)}"]
        for ref in blob_refs(d) if may_have_blob_refs(e.raw) else ():
            if ref.path not in ("data.result", "data.output"):
                lines.append(f"        blob {ref.path}: {ref.sha256[:16]}… ({ref.size} B)")
        yield now, lines


def _terminal(o: Mapping[str, Any], load_blob: BlobLoader) -> Iterator[tuple[int, list[str]]]:
    """The output an SSH channel showed (its recording), at the recorded times."""
    d = o["data"]
    ref = d.get("output")
    if not isinstance(ref, dict):
        return
    inline = ref.get("inline")
    sha = ref.get("sha256")
    blob = (
        inline.encode()
        if isinstance(inline, str)
        else (load_blob(sha) if isinstance(sha, str) else None)
    )
    if blob is None:
        yield ts_to_us(o["ts"]), ["        (recording blob missing)"]
        return
    rec = read_recording(blob)
    start = channel_start_us(o)
    for at, kind, text in rec.events:
        if kind in ("o", "e"):
            yield start + at, [Raw(text)]


def _prompt(d: Mapping[str, Any]) -> str:
    n = d.get("n")
    mark = "SQL>"
    if d.get("protocol") == "ssh":
        request = str(d.get("request", ""))
        mark = {"exec": "$", "shell": "shell:"}.get(request, f"{request}:")
    return f"#{n} {mark}" if isinstance(n, int) else mark
