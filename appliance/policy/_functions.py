"""What a function call in a statement does, judged by the function's name.

The classifier sees names, not the server's catalog, so it sorts calls by name:

- the server's file functions and the functions that reach outside the server
  (``pg_read_file``, ``lo_import``, ``dblink`` ...) are ``file_access``;
- functions that run SQL handed to them as text (``query_to_xml``, ``ts_stat``, ``dblink``)
  are ``unknown``: what that SQL does cannot be seen here;
- advisory lock functions are ``lock``, ``set_config`` is ``set`` (the classifier adds
  ``role`` when it sets the role);
- the immutable and stable functions of ``pg_catalog`` (:data:`PURE_BUILTINS`, generated from
  a real server) and a short list of harmless volatile ones add nothing;
- any other call is ``function_call``, with its name recorded so that rules can match it.

File, SQL-running and lock functions are recognised by their last name part in any schema
(``evil.pg_read_file`` is still treated as file access: wrong only in the safe direction).
A function counts as a harmless built-in only when called without a schema or with
``pg_catalog``: a same-named function in another schema is ``function_call``.

What name matching cannot see: a user-defined function with a built-in's name and an exact
argument type match, found first because ``pg_catalog`` was moved later in ``search_path``;
operators, casts and triggers that run user functions. The upstream account's privileges
remain the real fence; this classification is for policy and for the record.
"""

from __future__ import annotations

from appliance.policy._builtins import PURE_BUILTINS

FILE_FUNCTIONS = frozenset(
    {
        # core: generic file access (superuser or pg_read_server_files) and large objects
        "pg_read_file",
        "pg_read_file_old",
        "pg_read_binary_file",
        "pg_stat_file",
        "pg_ls_dir",
        "pg_ls_logdir",
        "pg_ls_waldir",
        "pg_ls_tmpdir",
        "pg_ls_archive_statusdir",
        "pg_ls_logicalsnapdir",
        "pg_ls_logicalmapdir",
        "pg_ls_replslotdir",
        "pg_ls_summariesdir",
        "pg_current_logfile",
        "pg_hba_file_rules",
        "pg_ident_file_mappings",
        "pg_show_all_file_settings",
        "lo_import",
        "lo_export",
        # adminpack
        "pg_file_write",
        "pg_file_rename",
        "pg_file_unlink",
        "pg_file_sync",
        "pg_logdir_ls",
    }
)

# Prefixes of extension function families that open connections from the server.
OUTSIDE_PREFIXES = ("dblink",)

# Functions that execute SQL given to them as text; the classifier cannot see that SQL.
SQL_TEXT_FUNCTIONS = frozenset(
    {
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "ts_stat",
        "ts_rewrite",
    }
)

# Stable functions that read whole tables, schemas or databases by name: reads that the
# relation extraction cannot list, so they are reported as function_call, not hidden.
BULK_READ_FUNCTIONS = frozenset(
    {
        "table_to_xml",
        "table_to_xmlschema",
        "table_to_xml_and_xmlschema",
        "schema_to_xml",
        "schema_to_xmlschema",
        "schema_to_xml_and_xmlschema",
        "database_to_xml",
        "database_to_xmlschema",
        "database_to_xml_and_xmlschema",
    }
)

LOCK_FUNCTIONS = frozenset(
    {
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_advisory_xact_lock",
        "pg_advisory_xact_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
        "pg_try_advisory_xact_lock",
        "pg_try_advisory_xact_lock_shared",
        "pg_advisory_unlock",
        "pg_advisory_unlock_shared",
        "pg_advisory_unlock_all",
    }
)

SETTING_FUNCTIONS = frozenset({"set_config"})

# Volatile built-ins that neither change data nor reach outside: random values, clocks,
# sizes and status read-outs (psql's \dt+ calls pg_table_size).
HARMLESS_VOLATILE = frozenset(
    {
        "random",
        "random_normal",
        "setseed",
        "clock_timestamp",
        "timeofday",
        "gen_random_uuid",
        "uuidv4",
        "uuidv7",
        "currval",
        "lastval",
        "pg_sequence_last_value",
        "pg_relation_size",
        "pg_table_size",
        "pg_indexes_size",
        "pg_total_relation_size",
        "pg_database_size",
        "pg_tablespace_size",
        "pg_is_in_recovery",
        "pg_jit_available",
        "pg_current_wal_lsn",
        "pg_current_wal_insert_lsn",
        "pg_current_wal_flush_lsn",
        "pg_last_wal_receive_lsn",
        "pg_last_wal_replay_lsn",
        "pg_last_xact_replay_timestamp",
        "pg_is_wal_replay_paused",
        "pg_get_wal_replay_pause_state",
        "pg_blocking_pids",
        "pg_safe_snapshot_blocking_pids",
        "pg_lock_status",
        "pg_notification_queue_usage",
        "pg_partition_tree",
        "pg_partition_ancestors",
        "pg_collation_actual_version",
        "pg_database_collation_actual_version",
        "pg_xact_status",
        "txid_status",
        "pg_xact_commit_timestamp",
        "pg_xact_commit_timestamp_origin",
        "pg_last_committed_xact",
        "pg_stat_have_stats",
        "current_query",
    }
)


def call_classes(parts: tuple[str, ...]) -> frozenset[str]:
    """The classes a call to the function named ``parts`` (schema-qualified or not, as
    written) adds to its statement; empty for a harmless built-in."""
    bare = parts[-1]
    if bare in FILE_FUNCTIONS:
        return frozenset({"file_access"})
    if bare.startswith(OUTSIDE_PREFIXES):
        return frozenset({"file_access", "unknown"})
    if bare in SQL_TEXT_FUNCTIONS:
        return frozenset({"unknown"})
    if bare in LOCK_FUNCTIONS:
        return frozenset({"lock"})
    if bare in SETTING_FUNCTIONS:
        return frozenset({"set"})
    builtin = len(parts) == 1 or (len(parts) == 2 and parts[0] == "pg_catalog")
    if (
        builtin
        and bare not in BULK_READ_FUNCTIONS
        and (bare in PURE_BUILTINS or bare in HARMLESS_VOLATILE)
    ):
        return frozenset()
    return frozenset({"function_call"})
