"""What a COPY statement tells of its data (read once, from the classification), for
masking its rows per column, toward the job and toward the ledger alike."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from appliance.masking import ColumnRule, MaskCounts, Masker, MaskingConfig, Style, _prefilter
from appliance.masking.postgres import LedgerRows, _CopyLines, escapes, mask_copy_line
from appliance.policy import CopySpec, copy_spec


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "COPY public.people (name, id) TO stdout;",
            CopySpec("out", "public.people", ("name", "id")),
        ),
        ("copy people (name) to stdout", CopySpec("out", None, ("name",))),
        ("COPY people TO STDOUT CSV HEADER", CopySpec("out", None, None, "csv", True)),
        (
            "copy s.t (a) to stdout with (format csv, header true)",
            CopySpec("out", "s.t", ("a",), "csv", True),
        ),
        (
            "copy s.t (a) to stdout with (format csv, header false)",
            CopySpec("out", "s.t", ("a",), "csv"),
        ),
        ("COPY (SELECT name FROM people) TO STDOUT", CopySpec("out")),
        ("COPY s.t (a) FROM STDIN", CopySpec("in", "s.t", ("a",))),
        ("COPY t TO STDOUT (FORMAT binary)", CopySpec("out", format="binary")),
        ("COPY t TO STDOUT BINARY", CopySpec("out", format="binary")),
        # The grammar decides, not words in the text (a table named csv, a comment).
        ("COPY csv TO STDOUT -- binary", CopySpec("out")),
        ('COPY "binary" TO STDOUT', CopySpec("out")),
        ("not sql at all", None),
        ("COPY s.t (a) TO STDOUT; SELECT 1", None),
    ],
)
def test_copy_spec(sql: str, expected: CopySpec | None) -> None:
    assert copy_spec(sql) == expected


def test_rows_are_masked_per_named_column() -> None:
    config = MaskingConfig(columns=(ColumnRule("name", Style.REDACT, table="people", label="N"),))
    masker = Masker(config, hmac_key=b"k" * 32).for_target("db")
    line = b"Ada\tWidget\n"

    def masked(copy: CopySpec) -> bytes:
        return mask_copy_line(masker, line, MaskCounts(), copy=copy, plans={})

    assert masked(CopySpec("out", "public.people", ("name", "other"))) == b"[REDACTED:N]\tWidget\n"
    assert masked(CopySpec("out", "public.products", ("name", "other"))) == line
    # columns unknown: every column the rule may match is masked (fail closed)
    assert masked(CopySpec("out")) == b"[REDACTED:N]\t[REDACTED:N]\n"


# Lines of both COPY formats: clean, with findings, NULLs, escapes, quotes, a bad row.
_TEXT_LINES = [
    b"1\tAlice Smith\talice@example.com\t4111 1111 1111 1111\t2024-05-01 10:00:00+00",
    b"2\tBob Jones\t\\N\tnone\t2024-05-02 11:00:00+00",
    b"3\tCarol\tno mail\ttier-3\t\\N",
    b"4\tpassword\\t=\\thunter2hunter2\tx\ty",  # an escape makes the finding
    b"5\tDave\t\\\\N\tcall (415) 555-2671\tz",
    b"6\tErin\tSSN: 536904399\t\\N\t\\N",
    b"7\tonly\tthree fields",
    b"8\tcaf\xc3\xa9 \xe2\x80\x94\tbroken \xe2\x80\tfine\tok",
]
_CSV_LINES = [
    b"id,name,email",
    b"1,Alice,alice@example.com",
    b'2,"Bob, Jr.","bob@example.com"',
    b'3,"pass ""word""",x',
    b"4,Carol,",
    b'5,"unterminated,4111111111111111',
]


@pytest.fixture(params=[False, True], ids=["one scan", "halves"])
def split(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run the test as it is, and with every bulk pre-filter pass of two lines or more cut
    in two halves scanned at once (as chunks of an export are: Prefilter.where_split)."""
    if request.param:
        monkeypatch.setattr(_prefilter, "SPLIT_FROM", 1)
    return bool(request.param)


@pytest.mark.parametrize(
    ("statement", "lines"),
    [
        ("COPY people (id, name, email, card, at) TO STDOUT", _TEXT_LINES),
        ("COPY people TO STDOUT", _TEXT_LINES),
        ("COPY people (id, name, email) TO STDOUT CSV HEADER", _CSV_LINES),
    ],
)
@pytest.mark.parametrize("rules", [False, True])
def test_ledger_copy_lines_masked_together_as_one_by_one(
    statement: str, lines: list[bytes], rules: bool, split: bool
) -> None:
    """LedgerRows pre-filters many lines at once; what it writes is what masking each line
    on its own writes, however the data is cut (and the pre-filter's pass)."""
    columns = (ColumnRule("card", Style.PARTIAL),) if rules else ()
    tm = Masker(MaskingConfig(columns=columns), hmac_key=b"k" * 32).for_target("db")
    copy = copy_spec(statement)
    assert copy is not None
    header = {"copy": "out", "table": copy.table, "columns": copy.columns}
    header |= {"csv": copy.format == "csv", "header": copy.header}
    one_by_one = _CopyLines(tm, copy)
    ref_counts = MaskCounts()
    expected = [one_by_one.mask(line, ref_counts).decode("utf-8", "replace") for line in lines]
    data = b"".join(line + b"\n" for line in lines) * 3
    expected *= 3
    if copy.header:
        expected[len(lines)] = expected[2 * len(lines)] = ""  # placeholders, replaced below
    for cut in (1, 7, 64, len(data)):
        counts = MaskCounts()
        rows = LedgerRows(tm, counts)
        rows.header(header)
        got: list[str] = []
        for i in range(0, len(data), cut):
            got += rows.copy_text(data[i : i + cut])
        got += rows.copy_end()
        if copy.header:
            # Only the first line is the header: repeats of it later are data.
            again = _CopyLines(tm, copy)
            again.header = False
            expected[len(lines)] = expected[2 * len(lines)] = again.mask(
                lines[0], MaskCounts()
            ).decode()
        assert got == expected, cut
        assert counts.total() >= 3 * ref_counts.total() - (1 if copy.header else 0)


def test_ledger_data_rows_in_a_run_are_masked_as_each_row_alone(split: bool) -> None:
    """LedgerRows.rows pre-filters a run of DataRows together (TargetMasker.rows_candidates);
    the cells and counts are those of masking each row on its own."""
    sysbench = b"68487932199-96439406143-93774651418-41631865787-96406072701"
    notes = [sysbench, b"call (415) 555-2671", b"bob@example.com", None, b"4111 1111 1111 1111"]
    rows: list[list[bytes | None]] = [
        [str(i).encode(), notes[i % 5], sysbench, b"4111111111111111"[: i + 4]] for i in range(15)
    ]
    header = {"columns": ["id", "note", "c", "card"], "types": [23, 25, 25, 25]}
    for columns in ((), (ColumnRule("card", Style.PARTIAL),)):
        tm = Masker(MaskingConfig(columns=columns), hmac_key=b"k" * 32).for_target("db")
        alone, together = MaskCounts(), MaskCounts()
        one, many = LedgerRows(tm, alone), LedgerRows(tm, together)
        one.header(header)
        many.header(header)
        expected = [one.row(r) for r in rows]
        assert many.rows(rows) == expected
        assert together.as_dict() == alone.as_dict()
        assert together.total() > 0
        assert many.rows([*rows[:1], [b"1"]]) == [one.row(rows[0]), one.row([b"1"])]
    tm = Masker(MaskingConfig(), hmac_key=b"k" * 32).for_target("db")
    plan = LedgerRows(tm, MaskCounts())
    plan.header(header)
    assert plan.plan is not None
    clean: list[list[bytes | None]] = [[b"1", sysbench, None, b"x"]] * 3
    assert tm.rows_candidates(plan.plan, clean) == {}
    assert set(tm.rows_candidates(plan.plan, [*clean, rows[1], *clean]) or ()) == {3}


@pytest.mark.parametrize("csv", [False, True])
def test_copy_frames_to_the_job_are_masked_as_the_ledger_masks_them(csv: bool) -> None:
    """ResponseMasker.mask_copy (one CopyData frame per row, pre-filtered once) writes what
    masking the line on its own writes."""
    from appliance.masking.postgres import CopyPlan, ResponseMasker

    sep = "," if csv else "\t"
    statement = "COPY people TO STDOUT" + (" CSV" if csv else "")
    lines = [
        sep.join(["1", "Alice", "alice@example.com", "4111-1111-1111-1111", "2024-05-12 10:30"]),
        sep.join(["2", "Bob", "nobody", "tier-2", "call (415) 555-2671 today"]),
        sep.join(["3", "Carol", "x", "68487932199-96439406143-93774651418", "ok"]),
    ]
    tm = Masker(MaskingConfig(), hmac_key=b"k" * 32).for_target("db")
    job = ResponseMasker(tm)
    plan = job.copy_plan(statement, binary=False)
    assert isinstance(plan, CopyPlan)
    reference = _CopyLines(tm, plan.copy)
    for line in lines:
        data = (line + "\n").encode()
        frame = b"d" + (len(data) + 4).to_bytes(4, "big") + data
        expected = reference.mask(data, MaskCounts())
        got = job.mask_copy(plan, frame)
        assert (data if got is None else got[5:]) == expected
    assert job.take_counts().as_dict()["detectors"] == {"card": 1, "email": 1, "phone": 1}


@pytest.mark.parametrize("rules", [False, True], ids=["detectors", "column rule"])
def test_datarow_runs_to_the_job_are_masked_as_each_frame_alone(rules: bool, split: bool) -> None:
    """ResponseMasker.mask_row_run (the relay's DataRows of one read, pre-filtered together)
    writes, frame by frame, what mask_frame writes for each frame alone, and counts the same;
    rows of another width, and rows of an undescribed result, too."""
    from appliance.masking.postgres import ResponseMasker
    from appliance.protocols.postgres.messages import DataRow, FieldDescription, RowDescription

    sysbench = b"68487932199-96439406143-93774651418-41631865787-96406072701"
    notes = [sysbench, b"call (415) 555-2671", b"bob@example.com", None, b"4111 1111 1111 1111"]
    rows: list[tuple[bytes | None, ...]] = [
        (str(i).encode(), notes[i % 5], sysbench, b"4111111111111111"[: i + 4]) for i in range(15)
    ]
    columns = (ColumnRule("card", Style.PARTIAL),) if rules else ()
    tm = Masker(MaskingConfig(columns=columns), hmac_key=b"k" * 32).for_target("db")
    described = RowDescription(tuple(FieldDescription(n) for n in ("id", "note", "c", "card")))
    for run in (rows, [*rows[:3], (b"1",), *rows[3:6]]):
        chunk = b"".join(DataRow(r).encode() for r in run)
        frames, pos = [], 0
        for r in run:
            end = pos + len(DataRow(r).encode())
            frames.append((pos, end))
            pos = end
        for described_or_not in (described, None):
            alone, together = ResponseMasker(tm), ResponseMasker(tm)
            plan = alone.plan(described_or_not, ())
            expected = [alone.mask_frame(plan, chunk[s:e]) for s, e in frames]
            assert together.mask_row_run(together.plan(described_or_not, ()), chunk, frames) == (
                expected
            )
            assert together.take_counts().as_dict() == alone.take_counts().as_dict()
            assert any(frame is not None for frame in expected)
            assert any(frame is None for frame in expected) or rules


# The definition escapes() implements without a regular expression: text format, a backslash
# that is not the whole of a NULL field; CSV, a quote.
_TEXT_ESCAPE = re.compile(rb"\\(?!N[\t\n])|(?<=[^\t\n])\\N")


def _lines_of(body: bytes, offsets: list[int]) -> set[int]:
    return {body.count(b"\n", 0, at) for at in offsets}


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b"\\", b"N", b"\t", b"\n", b"a", b'"', b"\\N"]), max_size=40))
def test_escapes_mark_the_lines_the_regular_expression_marks(pieces: list[bytes]) -> None:
    body = b"".join(pieces) + b"\n"
    text = [m.start() for m in _TEXT_ESCAPE.finditer(body)]
    assert _lines_of(body, list(escapes(body, csv=False))) == _lines_of(body, text)
    assert list(escapes(body, csv=True)) == [i for i, c in enumerate(body) if c == ord('"')]


def test_escapes_of_null_fields_and_escapes() -> None:
    assert list(escapes(b"\\N\t1\ta\\N\n\\N\n", csv=False)) == [6]
    assert list(escapes(b"x\\ty\n\\\\\n", csv=False)) == [1, 5, 6]
    assert list(escapes(b"plain\trow\n", csv=False)) == []


@pytest.mark.parametrize("csv", [False, True])
def test_copy_frames_of_one_read_are_masked_together_as_each_alone(csv: bool) -> None:
    """ResponseMasker.mask_copy_run (the relay's CopyData frames of one read, one pre-filter
    pass) gives each frame what mask_copy gives it alone, and counts the same."""
    from appliance.masking.postgres import ResponseMasker

    sep = "," if csv else "\t"
    statement = "COPY people TO STDOUT" + (" CSV" if csv else "")
    rows = [
        ["1", "Alice", "alice@example.com", "4111-1111-1111-1111", "2024-05-12 10:30"],
        ["2", "Bob", "nobody", "tier-2", "call (415) 555-2671 today"],
        ["3", "Carol", "x", "68487932199-96439406143-93774651418", "ok"],
        ["4", "Dan", "\\N", "no secret", "2024-05-13 11:00:00+00"],
        ["5", "Eve", '"quoted, eve@example.org"' if csv else "tab\\there", "5555", "x"],
        ["6", "Fay", "fay@example.net", "4012888888881881", "7"],
    ]
    frames = []
    for row in rows * 3:
        data = (sep.join(row) + "\n").encode()
        frames.append(b"d" + (len(data) + 4).to_bytes(4, "big") + data)
    tm = Masker(MaskingConfig(), hmac_key=b"k" * 32).for_target("db")
    alone, together = ResponseMasker(tm), ResponseMasker(tm)
    plan_alone = alone.copy_plan(statement, binary=False)
    plan_together = together.copy_plan(statement, binary=False)
    expected = [alone.mask_copy(plan_alone, f) for f in frames]
    chunk = b"C\x00\x00\x00\x04" + b"".join(frames) + b"c\x00\x00\x00\x04"
    spans, at = [], 5
    for f in frames:
        spans.append((at, at + len(f)))
        at += len(f)
    assert together.mask_copy_run(plan_together, chunk, spans) == expected
    assert any(x is not None for x in expected) and any(x is None for x in expected)
    assert together.take_counts().as_dict() == alone.take_counts().as_dict()


# Values of a customers-like row whose bytes are their own in both formats (no backslash but
# a whole NULL field, no quote): clean words, numbers and dates, values to mask, look-alikes,
# several in one value, and the delimiters of the other format.
_PLAIN_VALUES = [
    b"",
    b"42",
    b"Alice Smith",
    b"alice.smith12@example.com",
    b"4539578763621486",
    b"4539-5787-6362-1486",
    b"4539578763621487",  # fails Luhn
    b"2024-05-01 10:05:00+00",
    b"1234.56",
    b"call back on (415) 555-2671 today",
    b"ssn 536-90-4399, card 4111 1111 1111 1111",
    b"mail bob@example.org, ok",
    b"Refund of $12.34 approved on 2024-03-04 at 10:05",
    b"token=ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    b"caf\xc3\xa9 \xe2\x80",  # UTF-8, then a cut sequence
]


@settings(derandomize=True, deadline=None, database=None, max_examples=300)
@given(
    fields=st.lists(st.sampled_from([*_PLAIN_VALUES, b"\\N"]), min_size=1, max_size=6),
    csv=st.booleans(),
    eol=st.sampled_from([b"\n", b"\r\n", b""]),
    named=st.booleans(),
    rules=st.booleans(),
)
def test_plain_lines_masked_in_one_pass_as_field_by_field(
    fields: list[bytes], csv: bool, eol: bytes, named: bool, rules: bool
) -> None:
    """mask_plain_line (a line whose values are its own bytes, with the pre-filter's spans
    over it) writes and counts what mask_copy_line writes and counts pre-filtering each
    value on its own; with column rules it takes the general way, to the same result."""
    from appliance.masking._copy import CopyFormat
    from appliance.masking.postgres import mask_plain_line

    if csv:
        fields = [b"" if f == b"\\N" else f for f in fields]
    columns = ("id", "name", "email", "card", "note", "at")[: len(fields)]
    copy = CopySpec("out", "public.customers" if named else None, columns if named else None)
    copy = CopySpec(copy.direction, copy.table, copy.columns, "csv" if csv else "text")
    rule = (ColumnRule("name", Style.PARTIAL, table="public.customers"),) if rules else ()
    tm = Masker(MaskingConfig(columns=rule), hmac_key=b"k" * 32).for_target("db")
    line = (b"," if csv else b"\t").join(fields) + eol
    assume(not list(escapes(line, csv)))  # a NULL before CR or at the very end: an escape
    fmt = CopyFormat.make(csv=csv, delimiter="," if csv else "\t")
    plain, general = MaskCounts(), MaskCounts()
    got = mask_plain_line(tm, line, plain, copy=copy, fmt=fmt, plans={}, spans=tm.where(line))
    assert got == mask_copy_line(tm, line, general, copy=copy, plans={})
    assert plain.as_dict() == general.as_dict()
    if not plain:
        assert got is line  # nothing masked: the line itself, not a copy
