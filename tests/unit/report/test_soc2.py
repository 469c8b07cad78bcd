"""The SOC 2 mapping: the six criteria the issue names, each served by a section that has
a page, and every section serving at least one criterion."""

from __future__ import annotations

from appliance.report import _soc2
from appliance.report._pages import SECTION_PAGES


def test_every_criterion_is_served_by_pages_that_exist() -> None:
    ids = [c.id for c in _soc2.CRITERIA]
    assert ids == ["CC6.1", "CC6.2", "CC6.3", "CC6.6", "CC7.2", "CC8.1"]
    for c in _soc2.CRITERIA:
        sections = _soc2.sections_for(c.id)
        assert sections and all(s in SECTION_PAGES for s in sections), c.id
    for section, criteria in _soc2.SECTIONS.items():
        assert criteria and set(criteria) <= set(ids), section
