import numpy as np

import invhvp as ih


def test_woodbury_matches_dense_cholesky():
    rng = np.random.default_rng(0)
    U = rng.standard_normal((7, 40))
    b = rng.standard_normal(40)
    A = U.T @ U / 7 + 0.3 * np.eye(40)
    res = ih.solve(ih.LowRankPlusIdentity(U), b, ih.Exact(), damping=0.3)
    assert res.info["method"] == "woodbury"
    np.testing.assert_allclose(res.x, np.linalg.solve(A, b), rtol=1e-10)
