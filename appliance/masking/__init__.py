"""Masking of sensitive values: before anything is stored, and in responses where policy asks.

Where it sits: the proxy decodes a message (sans-IO), then calls into this package before the
message is recorded and, when :meth:`MaskingConfig.response_masking` says so, before a result
is sent to the job. Nothing here does I/O, reads a clock or a key file.

- **Detectors** (fixed names, used in config and ledger): ``card`` (13-19 digits, issuer prefix,
  Luhn), ``ssn`` (dashed; bare nine digits only after a name saying SSN; impossible
  area/group/serial excluded), ``iban`` (registry length and structure, mod 97), ``email``,
  ``phone`` (libphonenumber-valid; needs separators or a leading +), ``ipv4``, ``ipv6``,
  ``aws_access_key_id``, ``aws_secret_key``, ``github_token`` (CRC-32 checked), ``gitlab_token``,
  ``slack_token``, ``stripe_key``, ``pem_private_key``, ``jwt``, ``uri_password``,
  ``generic_secret`` (a value after ``password=``, ``api_key:``, ``Authorization:`` ...).
- **Defaults**: every detector on, in ``redact`` style, everywhere (statement text, bind
  parameters, notices and error fields, log lines, result values) -- except ``ipv4`` and
  ``ipv6``, off: addresses fill statement text and logs and identify hosts, not people or
  secrets. ``email`` and ``phone`` are on in statement text too: there they are data (an
  INSERT, a WHERE), and a SOC 2 ledger must not keep personal data the job only passed
  through; set ``scope: results`` to keep them readable in statements.
- **Styles**: ``redact`` -> ``[REDACTED:CARD]``; ``partial`` -> ``****-****-****-1111`` (last
  four letters or digits, at most half); ``hash`` -> ``[HMAC:<16 hex>]``, HMAC-SHA256 under the
  appliance's masking key, so equal values stay joinable. Column rules also have ``none`` (no
  whole-value mask; the detectors still run -- a rule can never switch detection off).
- **Pre-filter**: every detector's necessary patterns (a card is 13-19 digits with no digit
  right before or after them; a phone number's patterns follow the configured regions:
  :mod:`appliance.masking._phone_prefilter`) form one Hyperscan database
  (:mod:`appliance.masking._prefilter`; ``re`` where Hyperscan is missing); one pass says
  which detectors can find something in a text (over the raw bytes for result values, over a
  whole chunk of rows for COPY data and a whole run of result rows toward the ledger:
  :meth:`TargetMasker.rows_candidates`), and only those run their pattern and validator.
  Detectors run in priority order; a match inside a finding already selected is not
  validated. Compiling the databases takes a second or more: the ledger writer's process
  gets them serialized with the masker, and the daemon keeps them between starts in its
  cache directory (:mod:`appliance.prefilter_cache`, passed in: nothing here does I/O).
- **Overlaps and repeats**: where findings overlap the more specific detector wins (a GitHub
  token after ``token=``); masking repeats on its own output until nothing is found, so the
  output never holds a value a detector finds (and masking is idempotent); a found value's
  other stand-alone occurrences in the same text are masked too.
- **Result values**: with type OIDs from RowDescription, a masked value of a type that text
  would not parse as (``int8``, ``date``, ``inet`` ...) becomes SQL NULL; ``json``/``jsonb``
  are masked inside the document (a card stored as a JSON number becomes a string). Without
  type OIDs every column is taken as text. A binary-format value is masked through its text,
  one decision for the job's rows (:meth:`TargetMasker.mask_values`) and the ledger's
  (:meth:`TargetMasker.mask_cells`): text-like and ``jsonb`` values are rewritten in binary
  form, a binary integer or ``numeric`` that must be masked becomes NULL; other binary
  values cannot be read, are counted as ``binary_unscanned``, and become NULL under a column
  rule. ``bytea`` in text format is hex and is not scanned either. PostgreSQL's rows and
  COPY data, toward the job and toward the ledger, are in :mod:`appliance.masking.postgres`.
- **Error details**: column rules also apply where PostgreSQL quotes column values in an
  error DETAIL (``Key (tax_id)=(...) already exists``); ``Failing row contains (...)``,
  which has values without names, is redacted whole on a target that has column rules.
- **Counts**: :class:`MaskCounts` holds how many masks per detector (``column_rule`` for
  whole-value rules) and per column -- never a value -- for the ledger entry.

The API the proxy uses::

    config = parse_masking(cfg.masking, targets=cfg.targets)        # ConfigError on mistakes
    masker = Masker(config, hmac_key=key_bytes,    # key: config.key (SecretRef) or ephemeral
                    prefilter_cache=cache)  # appliance.prefilter_cache, or None
    start["masking_key"] = key_record(key_bytes, ...)  # its id: tokens compare across runs
    tm = masker.for_target("orders-db")                            # cached per target

    counts = MaskCounts()
    sql = tm.mask_text(statement, counts)                          # also params, errors, logs
    plan = tm.column_plan("public.customers", ["id", "card"], formats=[0], type_oids=[23, 25])
    row = tm.mask_values(plan, [b"1", b"4111111111111111"], counts)
    line = tm.mask_copy_line(plan, b"1\\t4111111111111111\\n", counts, csv=False, delimiter="\\t")
    params = tm.mask_values(tm.parameter_plan(2), [b"1", b"bob@example.com"], counts)
    entry["masked"] = counts.as_dict()        # {"detectors": {...}, "columns": {...}}
    if config.response_masking("orders-db", identity): ...send the masked row...

Binary COPY tuples have the same field layout as DataRow: pass their fields to
:meth:`TargetMasker.mask_values` with a plan built with ``formats=[1]``.

What is not caught (by design or not yet): values split by the job on purpose
(``substr(card, 1, 8)``), digits in non-ASCII scripts, a card run together with more digit
groups that make it 13-19 digits long (``4111 1111 1111 1111 123``), bare nine-digit SSNs and bare
ten-digit phone numbers without a name that says what they are, bind parameters whose
meaning only the statement shows (``password = $1``: the detectors run on the parameter
alone), and binary values of other types.
"""

from __future__ import annotations

from appliance.masking._config import (
    ColumnRule,
    DetectorSetting,
    MaskingConfig,
    ResponseRule,
    parse_masking,
)
from appliance.masking._copy import CopyRowError
from appliance.masking._counts import MaskCounts
from appliance.masking._detectors import DETECTOR_NAMES
from appliance.masking._key import EPHEMERAL, key_id, key_record
from appliance.masking._masker import (
    BINARY_UNSCANNED,
    COLUMN_RULE,
    ColumnAction,
    ColumnPlan,
    Masker,
    MaskingKeyError,
    TargetMasker,
)
from appliance.masking._styles import Style

__all__ = [
    "BINARY_UNSCANNED",
    "COLUMN_RULE",
    "DETECTOR_NAMES",
    "EPHEMERAL",
    "ColumnAction",
    "ColumnPlan",
    "ColumnRule",
    "CopyRowError",
    "DetectorSetting",
    "MaskCounts",
    "Masker",
    "MaskingConfig",
    "MaskingKeyError",
    "ResponseRule",
    "Style",
    "TargetMasker",
    "key_id",
    "key_record",
    "parse_masking",
]
