"""What an `auto` model class promises, from the catalogue models it may pick: plain functions."""

from __future__ import annotations

from dataclasses import dataclass

from koprogo_shared.catalogue import AUTO_CLASSES, CatalogueModel, auto_class, find_model


@dataclass(frozen=True, slots=True)
class AutoClass:
    """An `auto` class as a model: the smallest context of its models, edge-compatible if one is."""

    id: str
    models: tuple[CatalogueModel, ...]

    @property
    def context_length(self) -> int:
        return min(m.context_length for m in self.models)

    @property
    def edge_compatible(self) -> bool:
        return any(m.edge_compatible for m in self.models)

    def available(self, live: set[str]) -> bool:
        return any(m.id in live for m in self.models)


def find_auto_class(model_id: str) -> AutoClass | None:
    """The class `model_id` names, or None when it names none."""
    ids = auto_class(model_id)
    if ids is None:
        return None
    return AutoClass(model_id, tuple(m for m in map(find_model, ids) if m is not None))


def auto_classes() -> list[AutoClass]:
    """Every class with at least one catalogue model, in the catalogue's order."""
    return [c for c in map(find_auto_class, AUTO_CLASSES) if c is not None and c.models]


def context_length_of(model_id: str) -> int | None:
    """The context a request for `model_id` may fill: the model's, or the smallest of its class's; None if unknown."""
    known = find_model(model_id)
    if known is not None:
        return known.context_length
    cls = find_auto_class(model_id)
    return cls.context_length if cls is not None and cls.models else None
