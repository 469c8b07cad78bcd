"""Response masking toward the job: DataRow values rewritten before the job sees them.

Where this sits: when :meth:`~appliance.masking.MaskingConfig.response_masking` says so for
a session's target and identity, the relay hands every DataRow frame to
:class:`ResponseMasker`. Rows whose values need no mask are passed on untouched (the
detectors' pre-filter makes that cheap); a changed row is re-encoded with its new lengths.
A value that must be masked but arrives in binary format cannot be rewritten: the relay
withholds the result and tells the job which column and why (fail closed).
"""

from __future__ import annotations

from appliance.masking import BinaryColumnError, ColumnPlan, MaskCounts, TargetMasker
from appliance.protocols.postgres.messages import RowDescription, datarow_values, encode_datarow
from appliance.proxy.pg.relay import MaskingRefused


class ResponseMasker:
    """Implements :class:`~appliance.proxy.pg.relay.RowMasker` with a target's masker."""

    def __init__(self, masker: TargetMasker) -> None:
        self.masker = masker
        self.counts = MaskCounts()

    def plan(
        self, row_description: RowDescription | None, formats: tuple[int, ...]
    ) -> ColumnPlan | None:
        if row_description is None:
            return None
        fields = row_description.fields
        return self.masker.column_plan(
            None,
            [f.name for f in fields],
            formats=formats if len(formats) == len(fields) else [f.format for f in fields],
            type_oids=[f.type_oid for f in fields],
        )

    def mask_frame(self, plan: object, frame: bytes) -> bytes | None:
        """The DataRow ``frame`` rewritten, or None if no value changed. Raises
        MaskingRefused for a binary value that must be masked."""
        values = datarow_values(frame, 5)
        if not isinstance(plan, ColumnPlan) or len(plan.columns) != len(values):
            plan = self.masker.column_plan(None, [None] * len(values))
        try:
            masked = self.masker.mask_values(plan, values, self.counts)
        except BinaryColumnError as exc:
            raise MaskingRefused(str(exc)) from None
        if masked is values:
            return None
        return encode_datarow(masked)

    def take_counts(self) -> MaskCounts:
        counts, self.counts = self.counts, MaskCounts()
        return counts
