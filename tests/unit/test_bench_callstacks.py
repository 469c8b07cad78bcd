"""``tests/bench/callstacks.py``'s reading of ``perf script`` output (the lab run itself is a
benchmark, run by hand)."""

from __future__ import annotations

from tests.bench.callstacks import UNKNOWN, report, shares, stacks

# perf script's default output for three samples (the third ends the file without a blank
# line); frames leaf first.
SCRIPT = """\
appliance  8696  1000.532007:    1001001 cpu-clock:pppH:
\tffffffff8208d2bc tcp_v4_rcv+0xe1c ([kernel.kallsyms])
\t           f838f __GI___libc_write+0x4f (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t          1165c3 CPyDef_pg___core___PgSession___receive+0x2b3 (/x/_hot__mypyc.so)
\t          1165c3 _PyEval_EvalFrameDefault+0x10 (/usr/bin/python3.11)
\t          1165c3 _PyEval_EvalFrameDefault+0x20 (/usr/bin/python3.11)

appliance  8696  1000.533007:    1001001 cpu-clock:pppH:
\t           98ac0 [unknown] (/x/_hs_ext.so)
\t          1165c3 CPyDef__prefilter___Prefilter___which+0x422 (/x/_hot__mypyc.so)
\t          1165c3 _PyEval_EvalFrameDefault+0x20 (/usr/bin/python3.11)

appliance  8696  1000.534007:    1001001 cpu-clock:pppH:
\t          1165c3 CPyDef_pg___core___PgSession___receive+0x10 (/x/_hot__mypyc.so)
\t          1165c3 _PyEval_EvalFrameDefault+0x20 (/usr/bin/python3.11)
"""


def test_stacks_are_read_leaf_first_without_offsets() -> None:
    read = list(stacks(SCRIPT.splitlines()))
    assert read == [
        [
            "tcp_v4_rcv",
            "__GI___libc_write",
            "CPyDef_pg___core___PgSession___receive",
            "_PyEval_EvalFrameDefault",
            "_PyEval_EvalFrameDefault",
        ],
        [UNKNOWN, "CPyDef__prefilter___Prefilter___which", "_PyEval_EvalFrameDefault"],
        ["CPyDef_pg___core___PgSession___receive", "_PyEval_EvalFrameDefault"],
    ]


def test_a_stack_without_a_blank_line_after_it_ends_at_the_next_header() -> None:
    joined = SCRIPT.replace("\n\nappliance", "\nappliance")
    assert list(stacks(joined.splitlines())) == list(stacks(SCRIPT.splitlines()))


def test_shares_count_a_function_once_per_sample_and_leaves_apart() -> None:
    total, inclusive, leaves = shares(stacks(SCRIPT.splitlines()))
    assert total == 3
    assert inclusive["_PyEval_EvalFrameDefault"] == 3  # recursion counted once
    assert inclusive["CPyDef_pg___core___PgSession___receive"] == 2
    assert inclusive["__GI___libc_write"] == 1
    assert leaves == {"tcp_v4_rcv": 1, UNKNOWN: 1, "CPyDef_pg___core___PgSession___receive": 1}
    text = report(total, inclusive, leaves, 10)
    assert text.splitlines()[0] == "3 samples; inclusive share, the 10 largest:"
    assert "  100.0%  _PyEval_EvalFrameDefault" in text
    assert "   66.7%  CPyDef_pg___core___PgSession___receive" in text
    # [unknown] is a leaf, not a function of its own: only in the self list.
    assert text.count(UNKNOWN) == 1 and text.index(UNKNOWN) > text.index("self share")
    assert report(0, inclusive, leaves, 10) == "no samples"


def test_the_inclusive_list_may_hold_only_the_functions_named_so() -> None:
    total, inclusive, leaves = shares(stacks(SCRIPT.splitlines()))
    text = report(total, inclusive, leaves, 10, "CPyDef_")
    first, _, rest = text.partition("self share")
    assert first.splitlines() == [
        "3 samples; inclusive share, the 10 largest of those named *CPyDef_*:",
        "   66.7%  CPyDef_pg___core___PgSession___receive",
        "   33.3%  CPyDef__prefilter___Prefilter___which",
    ]
    assert "tcp_v4_rcv" in rest  # the leaves are all listed
