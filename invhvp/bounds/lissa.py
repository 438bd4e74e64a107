"""LiSSA step/batch/steps plans and error bounds (THEORY.md §5)."""

__all__: list[str] = []
