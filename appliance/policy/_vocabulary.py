"""The statement classes the classifiers report and the rules match on, and the groups that
stand for several of them in a rule (``risky``, ``write``, ``read``, ``file_changes``,
``ssh_forwarding``).

A class names an *effect* a statement has when the server runs it, not its first word: a
``SELECT`` whose CTE deletes rows has the classes ``select`` and ``delete``. One statement
usually has several classes (its own kind, what nested statements do, the functions it calls,
the risky markers). SSH operations (:mod:`appliance.policy._ssh`) are statements too: a
command of an exec command line, a shell, an SFTP operation, a forward.
"""

from __future__ import annotations

from collections.abc import Iterable

# Every class, with what it means. The text is the documentation; keep it in step with
# appliance.policy._classify, which is the only place that hands these out.
CLASSES: dict[str, str] = {
    "select": "a query run for its rows: SELECT, VALUES, TABLE, and the query executed by "
    "EXPLAIN ANALYZE, PREPARE, DECLARE CURSOR, CREATE TABLE AS or COPY (query); also FETCH, "
    "MOVE and CLOSE of a cursor",
    "insert": "inserts rows (INSERT, MERGE ... WHEN NOT MATCHED THEN INSERT)",
    "update": "changes rows (UPDATE, INSERT ... ON CONFLICT DO UPDATE, MERGE ... THEN UPDATE)",
    "delete": "deletes rows (DELETE, also inside a CTE, MERGE ... THEN DELETE)",
    "merge": "MERGE",
    "ddl": "creates or describes a schema object: CREATE ... (table, view, index, function, "
    "schema, extension, database ...), SELECT INTO, COMMENT, SECURITY LABEL",
    "alter": "alters a schema object or the server: ALTER ..., RENAME, ALTER SYSTEM, "
    "REASSIGN OWNED, ALTER DEFAULT PRIVILEGES",
    "drop": "drops a schema object: DROP ..., DROP DATABASE, DROP OWNED",
    "truncate": "TRUNCATE",
    "grant": "grants a privilege or a role membership (GRANT, ALTER DEFAULT PRIVILEGES GRANT)",
    "revoke": "revokes a privilege or a role membership",
    "role": "creates, changes or assumes a role: CREATE/ALTER/DROP ROLE|USER|GROUP, GRANT or "
    "REVOKE of a role, SET ROLE, SET SESSION AUTHORIZATION, set_config('role', ...)",
    "copy_to": "COPY ... TO (rows leave the server)",
    "copy_from": "COPY ... FROM (rows enter a table)",
    "copy_program": "COPY ... TO PROGRAM or FROM PROGRAM: the server runs a shell command",
    "file_access": "the server reads or writes its own files or reaches outside itself: "
    "pg_read_file, pg_ls_dir, lo_import, lo_export, adminpack, dblink, COPY to or from a "
    "server file, LOAD",
    "transaction": "BEGIN, COMMIT, ROLLBACK, SAVEPOINT, PREPARE TRANSACTION ...",
    "set": "reads or changes a session setting: SET, RESET, SHOW, DISCARD, SET CONSTRAINTS, "
    "set_config(...)",
    "encoding": "switches the client encoding to one the server reads otherwise than the "
    "appliance (SJIS, BIG5, GBK, UHC, GB18030, JOHAB, or a name not written as a constant) "
    "with SET client_encoding, SET NAMES or set_config: always refused by the appliance",
    "explain": "EXPLAIN (with ANALYZE the explained statement also runs and adds its classes)",
    "lock": "takes explicit locks: LOCK, SELECT ... FOR UPDATE/SHARE, pg_advisory_lock(...)",
    "maintenance": "VACUUM, ANALYZE, REINDEX, CLUSTER, CHECKPOINT, REFRESH MATERIALIZED VIEW",
    "listen_notify": "LISTEN, UNLISTEN, NOTIFY",
    "prepare": "PREPARE (with the classes of the prepared statement), EXECUTE, DEALLOCATE",
    "function_call": "calls a function not known to be free of side effects (anything but "
    "the immutable and stable functions of pg_catalog and a few harmless volatile ones, such "
    "as random()); the names are in ``functions`` so that rules can match them",
    "do": "an anonymous code block (DO) whose PL/pgSQL body was read: the block also has the "
    "classes of every statement and expression its body runs",
    "unknown": "cannot be classified: DO with dynamic SQL (EXECUTE) or in another language, CALL, functions that run SQL given as text "
    "(query_to_xml, dblink), unparseable text, any statement the classifier does not know",
    "delete_without_where": "a DELETE without WHERE, or whose WHERE is always true "
    "(1=1, true, 'a'='a', NOT false, x=x ...)",
    "update_without_where": "an UPDATE without WHERE, or whose WHERE is always true",
    # SSH (appliance.policy._ssh hands these out)
    "ssh_shell": "SSH: an interactive shell (with or without a terminal)",
    "ssh_exec": "SSH: one command of an exec command line (ssh host CMD, rsync, git, legacy "
    "scp); ``ssh.programs`` and ``ssh.arguments`` match it",
    "ssh_sudo": "SSH: a command run through sudo (``ssh.sudo`` matches the program sudo runs)",
    "ssh_subsystem": "SSH: a subsystem (``ssh.subsystems`` matches its name; sftp's own "
    "operations are decided one by one as file_*)",
    "file_read": "SSH: reads a file's content (SFTP open for reading, scp -f)",
    "file_write": "SSH: writes or creates a file or directory (SFTP open for writing, mkdir, "
    "setstat, symlink, hardlink, scp -t, a shell redirection)",
    "file_remove": "SSH: removes a file or directory (SFTP remove, rmdir)",
    "file_rename": "SSH: renames a file (SFTP rename, posix-rename): ``ssh.paths`` sees both names",
    "file_list": "SSH: lists a directory or reads metadata (SFTP opendir, stat, lstat, "
    "realpath, readlink, statvfs)",
    "ssh_port_forward": "SSH: a local port forward (ssh -L, direct-tcpip): ``ssh.destinations`` "
    "matches host:port; allowed only by a rule that names this class",
    "ssh_remote_forward": "SSH: a remote port forward (ssh -R): the target listens for the job; "
    "allowed only by a rule that names this class",
    "ssh_agent_forward": "SSH: agent forwarding (ssh -A); never relayed, always refused",
    "ssh_x11_forward": "SSH: X11 forwarding (ssh -X); never relayed, always refused",
}

# Groups usable in a rule wherever a class is.
GROUPS: dict[str, frozenset[str]] = {
    # The preset of risky classes, ready to use: `match: {classes: [risky]}`.
    "risky": frozenset(
        {
            "delete_without_where",
            "update_without_where",
            "drop",
            "truncate",
            "alter",
            "grant",
            "revoke",
            "role",
            "copy_program",
            "file_access",
        }
    ),
    # Changes data or schema. Used with `classes:` (the statement does any of these).
    "write": frozenset(
        {
            "insert",
            "update",
            "delete",
            "merge",
            "truncate",
            "copy_from",
            "ddl",
            "alter",
            "drop",
        }
    ),
    # Only reads. Used with `only_classes:` (everything the statement does is one of these):
    # EXPLAIN without ANALYZE has the single class `explain`, so it is a read; EXPLAIN
    # ANALYZE DELETE also has `delete`, so it is not.
    "read": frozenset({"select", "copy_to", "explain"}),
    # SSH file operations that change the target's files.
    "file_changes": frozenset({"file_write", "file_remove", "file_rename"}),
    # Every kind of SSH forwarding.
    "ssh_forwarding": frozenset(
        {"ssh_port_forward", "ssh_remote_forward", "ssh_agent_forward", "ssh_x11_forward"}
    ),
}

UNKNOWN = "unknown"
# The classes of SSH operations (appliance.policy._ssh); the rest are SQL's.
SSH_CLASSES = frozenset(
    {
        "ssh_shell",
        "ssh_exec",
        "ssh_sudo",
        "ssh_subsystem",
        "file_read",
        "file_write",
        "file_remove",
        "file_rename",
        "file_list",
        "ssh_port_forward",
        "ssh_remote_forward",
        "ssh_agent_forward",
        "ssh_x11_forward",
    }
)
# Classes only a rule that names them (or a deny) decides: a catch-all allow does not let
# through what nobody could read, nor open a tunnel nobody asked for.
EXPLICIT = frozenset({UNKNOWN, *GROUPS["ssh_forwarding"]})


def expand(names: Iterable[str]) -> frozenset[str]:
    """The classes named, with groups replaced by their members.

    Raises KeyError naming the first name that is neither a class nor a group.
    """
    out: set[str] = set()
    for name in names:
        if name in GROUPS:
            out |= GROUPS[name]
        elif name in CLASSES:
            out.add(name)
        else:
            raise KeyError(name)
    return frozenset(out)
