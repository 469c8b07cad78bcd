"""Message type bytes as ints, for the hot paths that compare them (relay, catalog reader,
codec, pcap renderer).

One home: :mod:`.messages` encodes and decodes with these (its classes carry no type byte
of their own: mypyc, which compiles them, turns a ``ClassVar`` of a dataclass into a
field). SQLSTATEs are in :mod:`.sqlstate`.
"""

from __future__ import annotations

# -- frontend (job -> server) ---------------------------------------------------------------
F_QUERY = ord("Q")
F_PARSE = ord("P")
F_BIND = ord("B")
F_DESCRIBE = ord("D")
F_EXECUTE = ord("E")
F_CLOSE = ord("C")
F_SYNC = ord("S")
F_FLUSH = ord("H")
F_FUNCTION = ord("F")
F_TERMINATE = ord("X")
F_COPY_DATA = ord("d")
F_COPY_DONE = ord("c")
F_COPY_FAIL = ord("f")
F_PASSWORD = ord("p")  # also SASLInitialResponse, SASLResponse

# -- backend (server -> job) ----------------------------------------------------------------
B_AUTHENTICATION = ord("R")
B_PARAMETER = ord("S")
B_KEY = ord("K")
B_NEGOTIATE = ord("v")
B_READY = ord("Z")
B_ROWDESC = ord("T")
B_DATAROW = ord("D")
B_COMPLETE = ord("C")
B_EMPTY = ord("I")
B_SUSPENDED = ord("s")
B_ERROR = ord("E")
B_NOTICE = ord("N")
B_NOTIFY = ord("A")
B_PARSE_OK = ord("1")
B_BIND_OK = ord("2")
B_CLOSE_OK = ord("3")
B_NODATA = ord("n")
B_PARAMDESC = ord("t")
B_COPY_IN = ord("G")
B_COPY_OUT = ord("H")
B_COPY_BOTH = ord("W")
B_COPY_DATA = ord("d")
B_COPY_DONE = ord("c")
B_FUNCTION_RESULT = ord("V")
