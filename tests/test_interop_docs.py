"""Every Python block of docs/interop.md runs as written.

A block whose first line is ``# requires: NAME`` is skipped when ``NAME`` is not importable
(pyDVL and captum live in their own environment: ``bash tests/pydvl_env/run.sh`` runs those).
"""

import importlib.util
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "interop.md"


def _blocks():
    text = DOC.read_text(encoding="utf-8")
    out = []
    section = "top"
    for m in re.finditer(r"^## ([^\n]+)$|^```python\n(.*?)^```$", text, flags=re.M | re.S):
        if m.group(1):
            section = m.group(1).split()[0].lower().strip(":")
        else:
            out.append(pytest.param(m.group(2), id=f"{section}-{len(out)}"))
    return out


BLOCKS = _blocks()


def test_the_page_has_a_block_per_recipe():
    assert [p.id.split("-")[0] for p in BLOCKS] == ["scipy", "torch.func", "pydvl", "captum"]


@pytest.mark.parametrize("code", BLOCKS)
def test_block_runs(code, tmp_path, monkeypatch):
    first = code.splitlines()[0]
    if first.startswith("# requires:"):
        for name in first.split(":", 1)[1].split(","):
            spec = importlib.util.find_spec(name.strip())
            if spec is None or spec.origin is None:  # absent, or only a namespace (e.g. the folder tests/pydvl_env)
                pytest.skip(f"{name.strip()} is not installed here (bash tests/pydvl_env/run.sh runs this block)")
    if "torch" in code and importlib.util.find_spec("torch") is None:  # pragma: no cover - CI installs torch
        pytest.skip("torch is not installed")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{DOC.name}:{code.splitlines()[0]}", "exec"), {"__name__": "__docs__"})
