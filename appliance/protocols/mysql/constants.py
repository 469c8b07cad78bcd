"""The MySQL/MariaDB protocol's numbers, in one place: capability flags, commands, server
status flags, column types and the character sets the appliance reads.

References: MySQL's ``include/mysql_com.h`` and ``include/field_types.h`` (Client/Server
Protocol documentation), MariaDB's ``include/mysql_com.h`` for the MariaDB-only
extensions (the extended capabilities in the handshake's last four filler bytes).
"""

from __future__ import annotations

import enum


class Cap(enum.IntFlag):
    """Capability flags (``CLIENT_*``)."""

    LONG_PASSWORD = 1  # MariaDB: CLIENT_MYSQL (set by a MySQL-compatible server/client)
    FOUND_ROWS = 1 << 1
    LONG_FLAG = 1 << 2
    CONNECT_WITH_DB = 1 << 3
    NO_SCHEMA = 1 << 4
    COMPRESS = 1 << 5
    ODBC = 1 << 6
    LOCAL_FILES = 1 << 7
    IGNORE_SPACE = 1 << 8
    PROTOCOL_41 = 1 << 9
    INTERACTIVE = 1 << 10
    SSL = 1 << 11
    IGNORE_SIGPIPE = 1 << 12
    TRANSACTIONS = 1 << 13
    RESERVED = 1 << 14
    SECURE_CONNECTION = 1 << 15
    MULTI_STATEMENTS = 1 << 16
    MULTI_RESULTS = 1 << 17
    PS_MULTI_RESULTS = 1 << 18
    PLUGIN_AUTH = 1 << 19
    CONNECT_ATTRS = 1 << 20
    PLUGIN_AUTH_LENENC_DATA = 1 << 21
    CAN_HANDLE_EXPIRED_PASSWORDS = 1 << 22
    SESSION_TRACK = 1 << 23
    DEPRECATE_EOF = 1 << 24
    OPTIONAL_RESULTSET_METADATA = 1 << 25
    ZSTD_COMPRESSION = 1 << 26
    QUERY_ATTRIBUTES = 1 << 27
    MULTI_FACTOR_AUTH = 1 << 28
    CAPABILITY_EXTENSION = 1 << 29
    SSL_VERIFY_SERVER_CERT = 1 << 30
    REMEMBER_OPTIONS = 1 << 31
    # MariaDB's extended capabilities (bits 32..63: the handshake's last filler bytes).
    MARIADB_PROGRESS = 1 << 32
    MARIADB_COM_MULTI = 1 << 33
    MARIADB_STMT_BULK_OPERATIONS = 1 << 34
    MARIADB_EXTENDED_METADATA = 1 << 35
    MARIADB_CACHE_METADATA = 1 << 36


# What the appliance can relay and inspect. Everything else is taken out of what each side
# is offered: compression (refused at negotiation: the appliance reads every packet),
# MariaDB's progress reports, COM_MULTI, metadata caching and extended metadata
# (unread formats), optional metadata and multi-factor authentication (unread formats).
# LOCAL_FILES is added upstream only when the target allows LOCAL INFILE.
RELAYABLE = (
    Cap.LONG_PASSWORD
    | Cap.FOUND_ROWS
    | Cap.LONG_FLAG
    | Cap.CONNECT_WITH_DB
    | Cap.NO_SCHEMA
    | Cap.ODBC
    | Cap.LOCAL_FILES
    | Cap.IGNORE_SPACE
    | Cap.PROTOCOL_41
    | Cap.INTERACTIVE
    | Cap.IGNORE_SIGPIPE
    | Cap.TRANSACTIONS
    | Cap.RESERVED
    | Cap.SECURE_CONNECTION
    | Cap.MULTI_STATEMENTS
    | Cap.MULTI_RESULTS
    | Cap.PS_MULTI_RESULTS
    | Cap.PLUGIN_AUTH
    | Cap.CONNECT_ATTRS
    | Cap.PLUGIN_AUTH_LENENC_DATA
    | Cap.CAN_HANDLE_EXPIRED_PASSWORDS
    | Cap.SESSION_TRACK
    | Cap.DEPRECATE_EOF
    | Cap.QUERY_ATTRIBUTES
    | Cap.REMEMBER_OPTIONS
    | Cap.MARIADB_STMT_BULK_OPERATIONS
)
# Needed of both sides: the appliance speaks only protocol 4.1 with plugin authentication.
REQUIRED = Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION


class Com(enum.IntEnum):
    """Command bytes (``COM_*``): the first byte of every packet a client starts."""

    SLEEP = 0x00
    QUIT = 0x01
    INIT_DB = 0x02
    QUERY = 0x03
    FIELD_LIST = 0x04
    CREATE_DB = 0x05
    DROP_DB = 0x06
    REFRESH = 0x07
    SHUTDOWN = 0x08
    STATISTICS = 0x09
    PROCESS_INFO = 0x0A
    CONNECT = 0x0B
    PROCESS_KILL = 0x0C
    DEBUG = 0x0D
    PING = 0x0E
    TIME = 0x0F
    DELAYED_INSERT = 0x10
    CHANGE_USER = 0x11
    BINLOG_DUMP = 0x12
    TABLE_DUMP = 0x13
    CONNECT_OUT = 0x14
    REGISTER_SLAVE = 0x15
    STMT_PREPARE = 0x16
    STMT_EXECUTE = 0x17
    STMT_SEND_LONG_DATA = 0x18
    STMT_CLOSE = 0x19
    STMT_RESET = 0x1A
    SET_OPTION = 0x1B
    STMT_FETCH = 0x1C
    DAEMON = 0x1D
    BINLOG_DUMP_GTID = 0x1E
    RESET_CONNECTION = 0x1F
    CLONE = 0x20
    STMT_BULK_EXECUTE = 0xFA  # MariaDB
    MULTI = 0xFE  # MariaDB COM_MULTI (never negotiated here)


class Status(enum.IntFlag):
    """Server status flags (``SERVER_*``) in OK and EOF packets."""

    IN_TRANS = 1
    AUTOCOMMIT = 2
    MORE_RESULTS_EXISTS = 8
    NO_GOOD_INDEX_USED = 16
    NO_INDEX_USED = 32
    CURSOR_EXISTS = 64
    LAST_ROW_SENT = 128
    DB_DROPPED = 256
    NO_BACKSLASH_ESCAPES = 512
    METADATA_CHANGED = 1024
    QUERY_WAS_SLOW = 2048
    PS_OUT_PARAMS = 4096
    IN_TRANS_READONLY = 8192
    SESSION_STATE_CHANGED = 16384


class Type(enum.IntEnum):
    """Column and parameter types (``MYSQL_TYPE_*``)."""

    DECIMAL = 0
    TINY = 1
    SHORT = 2
    LONG = 3
    FLOAT = 4
    DOUBLE = 5
    NULL = 6
    TIMESTAMP = 7
    LONGLONG = 8
    INT24 = 9
    DATE = 10
    TIME = 11
    DATETIME = 12
    YEAR = 13
    NEWDATE = 14
    VARCHAR = 15
    BIT = 16
    TIMESTAMP2 = 17
    DATETIME2 = 18
    TIME2 = 19
    TYPED_ARRAY = 20
    VECTOR = 242
    INVALID = 243
    BOOL = 244
    JSON = 245
    NEWDECIMAL = 246
    ENUM = 247
    SET = 248
    TINY_BLOB = 249
    MEDIUM_BLOB = 250
    LONG_BLOB = 251
    BLOB = 252
    VAR_STRING = 253
    STRING = 254
    GEOMETRY = 255


# Cursor types of COM_STMT_EXECUTE's flags.
CURSOR_TYPE_READ_ONLY = 1
PARAMETER_COUNT_AVAILABLE = 8
# Column flag: the column is binary (BINARY_FLAG); with charset 63 a string is bytes.
BINARY_FLAG = 128
BINARY_CHARSET = 63

# Session state change types in an OK packet's session state info.
SESSION_TRACK_SYSTEM_VARIABLES = 0
SESSION_TRACK_SCHEMA = 1
SESSION_TRACK_STATE_CHANGE = 2
SESSION_TRACK_GTIDS = 3
SESSION_TRACK_TRANSACTION_CHARACTERISTICS = 4
SESSION_TRACK_TRANSACTION_STATE = 5

# Character sets whose multibyte characters can hold the byte of a backslash or a quote
# (0x5C, 0x27...) as a trailing byte: the server would read a statement otherwise than a
# parser reading the bytes as ASCII-compatible text. A session may never use them as its
# client character set (the same hazard as PostgreSQL's SJIS/BIG5/GBK client encodings).
ASCII_UNSAFE_CHARSETS = frozenset({"big5", "cp932", "gbk", "sjis", "gb18030"})

# Collation id -> character set, for the collations a handshake may name. The ids of the
# ASCII-unsafe character sets are listed in full (so a handshake naming one is refused);
# the others are the common defaults. An id not here is refused too (fail closed).
COLLATION_CHARSETS: dict[int, str] = {
    1: "big5", 84: "big5",
    2: "latin2", 3: "dec8", 4: "cp850", 5: "latin1", 6: "hp8", 7: "koi8r",
    8: "latin1", 9: "latin2", 10: "swe7", 11: "ascii", 12: "ujis", 13: "sjis", 88: "sjis",
    16: "hebrew", 18: "tis620", 19: "euckr", 22: "koi8u", 24: "gb2312", 25: "greek",
    26: "cp1250", 28: "gbk", 87: "gbk", 30: "latin5", 32: "armscii8",
    33: "utf8mb3", 83: "utf8mb3", 192: "utf8mb3",
    35: "ucs2", 36: "cp866", 37: "keybcs2", 38: "macce", 39: "macroman", 40: "cp852",
    41: "latin7", 47: "latin1", 48: "latin1", 49: "latin1", 31: "latin1", 15: "latin1",
    94: "latin1", 57: "cp1256", 59: "cp1257", 63: "binary", 65: "ascii", 77: "latin2",
    95: "cp932", 96: "cp932", 97: "eucjpms", 98: "eucjpms",
    45: "utf8mb4", 46: "utf8mb4", 224: "utf8mb4", 255: "utf8mb4",
    248: "gb18030", 249: "gb18030", 250: "gb18030",
}  # fmt: skip
# MariaDB's and MySQL's utf8mb4 collations run from 224 to 247 and 255 to 323 (MySQL 8),
# utf8mb3's from 192 to 215: all ASCII-compatible.
for _id in range(224, 248):
    COLLATION_CHARSETS.setdefault(_id, "utf8mb4")
for _id in range(255, 324):
    COLLATION_CHARSETS.setdefault(_id, "utf8mb4")
for _id in range(192, 216):
    COLLATION_CHARSETS.setdefault(_id, "utf8mb3")
# MariaDB 10.10+ numbers its UCA 14 utf8mb3/utf8mb4 collations from 2048 on (they do not
# fit a handshake's one byte, so only SET NAMES can ask for them).


def charset_of_collation(collation: int) -> str | None:
    """The character set of collation id ``collation``, None if the appliance does not know it."""
    return COLLATION_CHARSETS.get(collation)


def python_codec(charset: str) -> str:
    """The Python codec that reads text of MySQL character set ``charset`` the way the
    server does for everything that matters to a statement's structure (ASCII bytes)."""
    if charset in ("latin1",):
        return "cp1252"  # MySQL's latin1 is Windows-1252
    if charset in ("ascii", "binary"):
        return "latin-1"
    return "utf-8"
