"""The base of every config section: strict, frozen, unknown keys refused, field docstrings kept."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """One component's settings. Strict types (no ``"8"`` for 8), no NaN or infinity, immutable once
    validated; each field's docstring is its documentation (``use_attribute_docstrings``)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        use_attribute_docstrings=True,
        allow_inf_nan=False,
        frozen=True,
    )

    def changed_fields(self) -> list[str]:
        """The fields whose values differ from their defaults (a saved config, which spells every field,
        has the same ones as the file it came from)."""
        fields = type(self).model_fields
        return [n for n, f in fields.items() if getattr(self, n) != f.get_default(call_default_factory=True)]
