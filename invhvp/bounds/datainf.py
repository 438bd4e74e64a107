"""DataInf error certificates (THEORY.md §4)."""

__all__: list[str] = []
