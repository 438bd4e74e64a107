"""The README's code examples run (with small stand-ins for the user's model and data)."""

import re
from pathlib import Path

import numpy as np
from cases import needs_torch, torch

README = (Path(__file__).parent.parent / "README.md").read_text()


def _block(heading):
    section = README.split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


@needs_torch
def test_own_model_example_runs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    X_train, y_train = torch.randn(40, 6), torch.randint(0, 3, (40,))
    X_test, y_test = torch.randn(4, 6), torch.randint(0, 3, (4,))
    ns = {"model": model, "X_train": X_train, "y_train": y_train, "X_test": X_test, "y_test": y_test}
    exec(_block("## Your own model in ten lines"), ns)
    assert ns["res"].harmful(5).shape == (4, 5)
    assert ns["res"].info["status"] == "success"
    assert ns["again"].values.shape == (4, 40)


def test_factor_once_example_runs():
    rng = np.random.default_rng(0)
    U = rng.standard_normal((30, 200))
    ns = {"U": U, "b": rng.standard_normal(200), "B": rng.standard_normal((200, 3)), "T": rng.standard_normal((2, 200))}
    exec("import invhvp as ih\n" + _block("## Factor once, apply many"), ns)
    assert ns["I"].shape == (2, 30) and ns["res"].ok
