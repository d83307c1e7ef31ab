"""DICOM PS3.15 Annex E Table E.1-1 (Basic Application Level Confidentiality Profile) as data: every
attribute of the table with its action code, read from the `dicom-anonymizer` package, which keeps the
table generated from the standard's own text, one module per edition (`EDITION` here).

Action codes, as the standard writes them: X remove, Z empty, D dummy value, U new UID consistent
within the set, and the combined X/Z, X/D, X/Z/D, Z/D, X/Z/U* (the choice depends on the attribute's
Type in the IOD). `shared.deid` decides how each is applied; this module only answers "which action".
"""

from __future__ import annotations

from functools import lru_cache

EDITION = "dicomfields_2026c"
# Category name in dicom-anonymizer -> the standard's action code.
_CATEGORIES = {
    "X_TAGS": "X", "Z_TAGS": "Z", "D_TAGS": "D", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*",
}


@lru_cache(maxsize=1)
def table() -> tuple[dict[int, str], tuple[tuple[int, int, str], ...]]:
    """({tag: action} for single attributes, ((value, mask, action), ...) for repeating groups such as
    Overlay Data 60xx,3000: a tag matches when `tag & mask == value & mask`)."""
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    categories = dicom_anonymization_database_selector(EDITION)
    single: dict[int, str] = {}
    masked: list[tuple[int, int, str]] = []
    for category, action in _CATEGORIES.items():
        for entry in categories[category]:
            if len(entry) == 2:
                single[(entry[0] << 16) | entry[1]] = action
            else:
                group, element, group_mask, element_mask = entry
                masked.append(((group << 16) | element, (group_mask << 16) | element_mask, action))
    return single, tuple(masked)


def action_for(tag: int) -> str | None:
    """The table's action for this (public) tag, or None when the table does not list it."""
    single, masked = table()
    action = single.get(tag)
    if action is not None:
        return action
    for value, mask, masked_action in masked:
        if tag & mask == value & mask:
            return masked_action
    return None
