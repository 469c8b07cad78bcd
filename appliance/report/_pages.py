"""The report's HTML pages, rendered with Jinja2 from :class:`~appliance.report._facts.Facts`.

Where it sits: :mod:`appliance.report._package` asks for every page as (path, text) and
writes them. Pages are static (no script), escape everything they show (autoescape), and
link to each other with relative paths, so that the package opens from a file anywhere.
The templates live in ``templates/``; this module only decides what each page gets.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from appliance.report import _charts, _soc2
from appliance.report._facts import DAY_SERIES, Facts, LogFacts, SessionFacts

SECTION_PAGES = {
    "summary": "index.html",
    "logs": "index.html#verification",
    "identities": "identities.html",
    "targets": "targets.html",
    "decisions": "decisions.html",
    "privileged": "privileged.html",
    "gaps": "gaps.html",
    "sessions": "sessions.html",
    "verify": "verify.html",
}


@dataclass(frozen=True)
class Cast:
    """A terminal recording written beside a session's page: its file name (asciicast v2),
    the request it belongs to, its number of events."""

    name: str
    n: int | None
    events: int


@dataclass(frozen=True)
class Status:
    cls: str
    headline: str


def status_of(facts: Facts) -> Status:
    n = len(facts.logs)
    if facts.tampered:
        return Status(
            "bad",
            f"TAMPERING DETECTED: {len(facts.tampered)} of {n} log(s) contradict their signed "
            "checkpoints (details on the summary page)",
        )
    if facts.unverifiable:
        return Status(
            "warn", f"NOT VERIFIED: {len(facts.unverifiable)} of {n} log(s) could not be verified"
        )
    return Status("ok", f"VERIFIED: all {n} log(s) of the period match their signed checkpoints")


def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("appliance.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.globals["criteria_of"] = lambda section: _soc2.SECTIONS.get(section, ())
    env.globals["sections_for"] = _soc2.sections_for
    return env


class Pages:
    """Renders every page of one report."""

    def __init__(
        self,
        facts: Facts,
        *,
        scope: Mapping[str, Any],
        proofs: Mapping[tuple[str, int], str],
        rows: int,
    ) -> None:
        self.facts = facts
        self.env = _env()
        self.common = {"scope": scope, "status": status_of(facts)}
        self.proofs = proofs
        self.rows = rows
        self.log_names = {lf.slug: lf.origin or lf.name for lf in facts.logs}
        self.holds: dict[tuple[str, str | None], list[Any]] = {}
        for h in facts.holds:
            self.holds.setdefault((h.log, h.session), []).append(h)

    def _render(self, template: str, path: str, **kw: Any) -> tuple[str, str]:
        root = "../" * path.count("/")
        text = self.env.get_template(template).render(**self.common, root=root, **kw)
        return path, text

    def all(self) -> Iterator[tuple[str, str]]:
        """(path in the package, HTML) of every page but the session pages."""
        f = self.facts
        yield self._index()
        for key, title, other, intro in (
            (
                "identity",
                "Identities",
                "Targets",
                "Who reached protected targets: each CI job (repository, workflow, job) or "
                "process, and the flows nobody could be attributed to.",
            ),
            (
                "target",
                "Targets",
                "Identities",
                "Each protected target and who reached it.",
            ),
        ):
            groups = f.group(key)
            section = "identities" if key == "identity" else "targets"
            yield self._render(
                "groups.html.j2",
                f"{section}.html",
                section=section,
                title=title,
                intro=intro,
                key_title=key.capitalize(),
                other_title=other,
                groups=groups,
            )
            for g in groups:
                yield self._render(
                    "group.html.j2",
                    g["page"],
                    section=section,
                    title=f"{key.capitalize()}: {g['name']}",
                    other_title=other,
                    group=g,
                )
        yield self._render(
            "decisions.html.j2",
            "decisions.html",
            title="Denials and approvals",
            denials=f.denials,
            holds=f.holds,
            refusals=f.refusals,
            proofs=self.proofs,
        )
        sessions = f.in_period()
        yield self._render(
            "sessions.html.j2",
            "privileged.html",
            section="privileged",
            title="Privileged sessions",
            intro="Sessions with statements of privileged classes (schema changes, deletes, "
            "truncates, grants and roles, server files and programs); each links to its replay.",
            sessions=[s for s in sessions if s.privileged],
        )
        yield self._render(
            "sessions.html.j2",
            "sessions.html",
            section="sessions",
            title="All sessions",
            intro="Every session with entries in the period, in order of its start.",
            sessions=sessions,
        )
        yield self._render(
            "gaps.html.j2", "gaps.html", title="Gaps", gaps=f.gaps, log_names=self.log_names
        )
        yield self._render(
            "verify.html.j2",
            "verify.html",
            title="Check it without us",
            logs=f.logs,
            openssl_commands=openssl_commands(f.logs[0].slug if f.logs else "LOG"),
            jq_commands=jq_commands(f),
        )

    def _index(self) -> tuple[str, str]:
        f = self.facts
        totals = f.totals()
        charts = [
            _charts.per_day(f.days, ("sessions", "statements"), "Sessions and statements per day"),
            _charts.per_day(f.days, ("denials", "holds"), "Denials and holds per day"),
            _charts.bars(
                {k: f.masked.get(k, 0) for k in sorted(set(f.masked) | set(f.masked_to_job))},
                "Values masked before recording, by kind",
                color=3,
            ),
            _charts.bars(totals["holds_by_outcome"], "Holds by outcome", color=2),
        ]
        return self._render(
            "index.html.j2",
            "index.html",
            title="Summary",
            logs=f.logs,
            tampered=f.tampered,
            unverifiable=f.unverifiable,
            totals=totals,
            masked=f.masked,
            masked_to_job=f.masked_to_job,
            mask_kinds=sorted(set(f.masked) | set(f.masked_to_job)),
            charts=[Markup(svg) for svg in charts],  # matplotlib's own SVG, not user text
            days=f.days,
            day_series=DAY_SERIES,
            criteria=_soc2.CRITERIA,
            section_pages=SECTION_PAGES,
        )

    def session(
        self, s: SessionFacts, log: LogFacts, transcript: str, casts: list[Cast]
    ) -> tuple[str, str]:
        return self._render(
            "session.html.j2",
            s.page,
            title=f"Session {s.id}",
            s=s,
            log=log,
            transcript=transcript,
            casts=casts,
            rows=self.rows,
            holds=self.holds.get((s.log, s.id), []),
        )


def openssl_commands(log: str) -> str:
    """Shell commands that verify ``logs/LOG/checkpoint`` with ``logs/LOG/vkey`` and openssl."""
    d = shlex.quote(f"logs/{log}")
    return "\n".join(
        [
            f"L={d}",
            "# the signed text: the lines before the blank line",
            "sed '/^$/,$d' \"$L/checkpoint\" > text",
            "# the signature: base64 after the key name, less its 4-byte key id",
            "grep '^\u2014 ' \"$L/checkpoint\" | head -n 1 | cut -d' ' -f3 | base64 -d | tail -c 64 > sig",
            "# the public key: the vkey after its second +, less its 1-byte algorithm, as DER then PEM",
            "{ printf '\\060\\052\\060\\005\\006\\003\\053\\145\\160\\003\\041\\000'; "
            'cut -d+ -f3- "$L/vkey" | base64 -d | tail -c 32; } > pub.der',
            "openssl pkey -pubin -inform DER -in pub.der -out pub.pem",
            "openssl pkeyutl -verify -pubin -inkey pub.pem -rawin -in text -sigfile sig",
        ]
    )


def jq_commands(facts: Facts) -> str:
    """jq commands whose outputs equal the summary's counts."""
    p = facts.period
    cond = " and ".join(
        c
        for c in (
            f'.ts >= "{p.since}"' if p.since else "",
            f'.ts < "{p.until}"' if p.until else "",
        )
        if c
    )
    within = f"select({cond}) | " if cond else ""
    files = "logs/*/entries.jsonl"
    return "\n".join(
        [
            "# sessions with entries in the period",
            f"jq -r '{within}select(.session != null) | .origin + \" \" + .session' {files} | sort -u | wc -l",
            "# statements",
            f"jq -c '{within}select(.type == \"statement\")' {files} | wc -l",
            "# statements denied (enforced)",
            f'jq -c \'{within}select(.type == "statement" and .data.decision.decision == "deny" '
            f"and .data.decision.enforced != false)' {files} | wc -l",
            "# statements held for approval",
            f"jq -c '{within}select(.type == \"approval.requested\")' {files} | wc -l",
        ]
    )
