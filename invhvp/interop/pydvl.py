r"""invhvp inside pyDVL: an influence model whose inverse curvature is an invhvp solver.

A pyDVL user changes one line::

    from pydvl.influence.torch import CgInfluence
    model_inf = CgInfluence(model, loss, regularization=0.1)
    # becomes
    import invhvp as ih
    from invhvp.interop.pydvl import InvhvpInfluence
    model_inf = InvhvpInfluence(model, loss, solver=ih.Exact(), damping=0.1)

    model_inf.fit(train_loader)                        # one-time work (factorization, ...)
    values = model_inf.influences(x_test, y_test, x, y)   # (n_test, n_train), pyDVL's sign
    factors = model_inf.influence_factors(x_test, y_test)

:class:`InvhvpInfluence` is a subclass of pyDVL's ``TorchComposableInfluence``, so pyDVL's own
machinery computes the test/train gradients, block structures (``BlockMode.FULL``,
``LAYER_WISE``, ``PARAMETER_WISE`` or a custom ``OrderedDict``), both influence modes
(``InfluenceMode.Up`` and ``Perturbation``), ``influences_by_block``, ``with_regularization``
and its influence calculators.  Per block, the curvature is an invhvp operator and
``(G + λI)⁻¹`` an :class:`~invhvp.Inverse` factored once at ``fit``; every application is an
invhvp solve on columns whose :class:`~invhvp.Status` is verified (``on_failure``).

Curvature (``curvature=``), per block of parameters, over the ``n`` training points:

- ``"gram"`` (default): the empirical Fisher ``G = (1/n) Σ_i g_i g_iᵀ`` from the per-sample
  gradients (:func:`invhvp.adapters.per_sample_gradients`), held as a
  :class:`~invhvp.LowRankPlusIdentity` (no ``d×d`` matrix; :class:`~invhvp.Exact` uses
  Woodbury when ``n < d``).  This is what pyDVL calls ``SecondOrderMode.GAUSS_NEWTON``.
- ``"hessian"``: the matrix-free Hessian of the mean loss (:func:`invhvp.adapters.hvp_operator`),
  pyDVL's ``SecondOrderMode.HESSIAN``.  It may be indefinite: ``Exact`` needs ``H + λI``
  positive definite (else :class:`~invhvp.errors.NotPositiveDefiniteError`), CG reports
  non-positive curvature.
- ``"ggn"``: the matrix-free generalized Gauss-Newton ``(1/n) Σ_i J_iᵀ ∇²_f ℓ_i J_i``
  (:func:`invhvp.adapters.ggn_operator`); pyDVL 0.10 has no counterpart.

**Sign convention: pyDVL's.**  ``influences`` returns ``+g_testᵀ (G + λI)⁻¹ g_train``, the
opposite of :func:`invhvp.influence_matrix` (``−g_testᵀ (G + λI)⁻¹ g_train``, positive =
harmful).  Here a *negative* value means up-weighting the training point raises the test loss
(harmful), a positive one that it lowers it (helpful)::

    InvhvpInfluence(...).influences(x_t, y_t, x, y) == -ih.influence_matrix(G_train, G_test, ...)

pyDVL is imported only when this module is (``import invhvp.interop`` does not import it);
pyDVL 0.10 pins ``numpy<2``, so it usually lives in its own environment (``tests/pydvl_env/run.sh``).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

from .. import _checks as C
from ..errors import DeviceError, DTypeError, InputError, UnsupportedOperatorError
from ..solvers.base import Solver
from ..solvers.inverse import FAILURE_POLICIES

try:
    import torch
    from pydvl.influence.torch.base import (
        TensorOperator,
        TorchComposableInfluence,
        TorchGradientProvider,
        TorchOperatorGradientComposition,
    )
    from pydvl.influence.torch.util import BlockMode, SecondOrderMode

    from ._pydvl_curvature import (
        CURVATURES,
        batch_xy,
        curvature_operator,
        damping_value,
        gram_gradients,
        same_device,
    )
except ImportError as _exc:  # pragma: no cover - exercised in the main environment (no pyDVL)
    _IMPORT_ERROR: ImportError | None = _exc
else:
    _IMPORT_ERROR = None

__all__ = ["InvhvpInfluence", "InvhvpOperator"]

_INSTALL_HINT = (
    "invhvp.interop.pydvl needs pyDVL with its torch influence module: "
    "pip install 'pydvl[influence]' torch (pyDVL 0.10 pins numpy<2: use a separate environment, "
    "see tests/pydvl_env/run.sh)"
)


if _IMPORT_ERROR is None:

    def _curvature_name(curvature) -> str:
        """``curvature`` as one of ``"gram"``, ``"hessian"``, ``"ggn"``; pyDVL's ``SecondOrderMode`` is mapped."""
        if isinstance(curvature, SecondOrderMode):
            # pyDVL's "Gauss-Newton" is the Gram of per-sample gradients (its GaussNewtonOperator)
            return "gram" if curvature is SecondOrderMode.GAUSS_NEWTON else "hessian"
        return C.choice(curvature, "curvature", CURVATURES)

    class InvhvpOperator(TensorOperator):
        r"""A pyDVL ``TensorOperator`` that applies ``(A + λI)⁻¹`` with an invhvp solver.

        pyDVL holds gradients as rows ``(N, d)``; invhvp solves columns ``(d, k)``: a matrix
        is applied as ``inverse.solve(mat.T).x.T`` in one solve (no ``vmap`` over rows, so
        solvers with internal state or data-dependent control flow work).

        Parameters
        ----------
        curvature : invhvp.Operator
            ``A``, a torch-backed invhvp operator (e.g. a :class:`~invhvp.LowRankPlusIdentity`
            of per-sample gradients, or a matrix-free Hessian).
        solver : invhvp.Solver or None
            ``None``: :func:`invhvp.choose_solver` (exact when cheap, else CG).
        regularization : float or None
            ``λ >= 0`` (pyDVL's name for the damping); ``None`` means 0.
        on_failure : {"raise", "warn", "ignore"}
            Policy when a solve's verified status is not SUCCESS.

        Attributes
        ----------
        inverse : invhvp.Inverse
            The factored inverse (``inverse.info``: method, condition estimate, ...).
        results : list of invhvp.SolveResult
            One report per application (``x`` dropped): status, residual norms, ``info``.
            Clear it with ``results.clear()`` in long runs.
        """

        def __init__(self, curvature, solver: Solver | None = None, regularization=None, on_failure="raise"):
            from ..operators import Operator

            if not isinstance(curvature, Operator):
                raise DTypeError(f"curvature: expected an invhvp operator, got {type(curvature).__name__}")
            if solver is not None and not isinstance(solver, Solver):
                raise DTypeError(f"solver: expected an invhvp solver instance such as invhvp.Exact(), got {solver!r}")
            self.curvature = curvature
            self.solver = solver
            self.on_failure = C.choice(on_failure, "on_failure", FAILURE_POLICIES)
            self.results: list = []
            self._regularization = damping_value(regularization, "regularization")
            self.inverse = self._factor()

        def _factor(self):
            from ..solvers.api import inverse

            return inverse(self.curvature, self.solver, damping=self._regularization, on_failure=self.on_failure)

        @property
        def regularization(self) -> float:
            """``λ``; setting it refactors the inverse (pyDVL's ``with_regularization``)."""
            return self._regularization

        @regularization.setter
        def regularization(self, value):
            self._regularization = damping_value(value, "regularization")
            self.inverse = self._factor()

        @property
        def input_size(self) -> int:
            return int(self.curvature.size)

        @property
        def device(self):
            return self.curvature.device

        @property
        def dtype(self):
            return self.curvature.dtype

        def to(self, device):
            if same_device(device, self.device):
                return self
            raise DeviceError(
                f"device: this invhvp operator was fitted on {self.device}; move the model to {device} "
                "first and call fit again (the curvature is built on the model's device)"
            )

        def _solve(self, B):
            if B.dtype != self.dtype:
                raise DTypeError(f"rhs: gradients have dtype {B.dtype}, the curvature {self.dtype}")
            res = self.inverse.solve(B)
            self.results.append(dataclasses.replace(res, x=None))  # the report, not the solution
            return res.x

        def _apply_to_vec(self, vec):
            return self._solve(vec.reshape(-1, 1))[:, 0]

        def _apply_to_mat(self, mat):
            # rows (N, d) → columns (d, N) → rows
            return self._solve(mat.T.contiguous()).T

    class InvhvpInfluence(TorchComposableInfluence):
        r"""pyDVL influence model whose inverse curvature is an invhvp solver, per block.

        A drop-in for pyDVL's ``DirectInfluence``/``CgInfluence``/...: ``fit(train_loader)``,
        ``influences(x_test, y_test, x=None, y=None, mode=InfluenceMode.Up)``,
        ``influence_factors(x, y)``, ``influences_from_factors(...)``, the ``*_by_block``
        variants, ``with_regularization(...)`` and pyDVL's influence calculators work as in
        pyDVL.  Values are in **pyDVL's sign convention** (``+g_testᵀ(G+λI)⁻¹g_train``, the
        negative of :func:`invhvp.influence_matrix`; see the module docstring).

        Parameters
        ----------
        model : torch.nn.Module
            The trained model (call ``model.eval()`` first); pyDVL differentiates its
            trainable (``requires_grad``) parameters.
        loss : callable
            pyDVL's ``loss(outputs, targets) -> scalar``, mean-reduced over the batch (e.g.
            ``torch.nn.functional.cross_entropy``).  Per-sample losses are
            ``loss(outputs[i:i+1], targets[i:i+1])``, as pyDVL computes them.
        solver : invhvp.Solver, optional
            ``ih.Exact()``, ``ih.CG(...)``, ``ih.DataInf()``, ``ih.LiSSA(...)``,
            ``ih.Identity()``; ``None`` chooses per block (:func:`invhvp.choose_solver`).
            ``DataInf`` needs ``curvature="gram"``; ``Exact`` on a matrix-free curvature
            materializes it (``d <= Exact.max_dense_size``).
        damping : float, dict or None, default None
            ``λ >= 0`` added to the curvature (pyDVL's ``regularization``); a dict maps block
            names to values (missing blocks: 0); ``None`` means 0 (singular for
            ``curvature="gram"`` with fewer training points than parameters).
        curvature : {"gram", "hessian", "ggn"} or pyDVL ``SecondOrderMode``, default "gram"
            ``SecondOrderMode.GAUSS_NEWTON`` is ``"gram"`` (pyDVL's Gauss-Newton is the Gram of
            per-sample gradients), ``SecondOrderMode.HESSIAN`` is ``"hessian"``.
        block_structure : pyDVL ``BlockMode`` or OrderedDict, default ``BlockMode.FULL``
            As in pyDVL: one block for all parameters, one per layer, one per parameter
            tensor, or ``{block name: [parameter names]}``; the curvature is block-diagonal.
        on_failure : {"raise", "warn", "ignore"}, default "raise"
            Policy when a solve's verified status is not SUCCESS
            (:class:`~invhvp.errors.ConvergenceError` carries the report).

        Attributes
        ----------
        inverses : OrderedDict of str to invhvp.Inverse
            After ``fit``: one factored inverse per block.
        results : list of (str, invhvp.SolveResult)
            Every solve's report (block name, status, residual), in order.

        Raises
        ------
        InputError
            An unknown ``curvature`` or ``on_failure``; a negative, non-finite or misnamed
            ``damping``; a batch that is not a pair ``(x, y)``.
        DTypeError
            ``solver`` that is not an invhvp solver; ``model`` that is not a module.
        UnsupportedOperatorError
            ``solver=DataInf()`` with a curvature other than ``"gram"``.

        Examples
        --------
        >>> import torch, invhvp as ih
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from invhvp.interop.pydvl import InvhvpInfluence
        >>> model = torch.nn.Linear(3, 2).double()
        >>> X, Y = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 2, (10,))
        >>> inf = InvhvpInfluence(model, torch.nn.functional.cross_entropy, ih.Exact(), damping=0.1)
        >>> inf = inf.fit(DataLoader(TensorDataset(X, Y), batch_size=4))
        >>> inf.influences(X[:2], Y[:2], X, Y).shape
        torch.Size([2, 10])
        """

        def __init__(
            self,
            model,
            loss,
            solver: Solver | None = None,
            damping=None,
            *,
            curvature="gram",
            block_structure=None,
            on_failure: str = "raise",
        ):
            if not isinstance(model, torch.nn.Module):
                raise DTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
            if not callable(loss):
                raise InputError(f"loss: expected a callable loss(outputs, targets), got {type(loss).__name__}")
            if solver is not None and not isinstance(solver, Solver):
                raise DTypeError(f"solver: expected an invhvp solver instance such as invhvp.Exact(), got {solver!r}")
            self.curvature = _curvature_name(curvature)
            from ..solvers.datainf import DataInf

            if isinstance(solver, DataInf) and self.curvature != "gram":
                raise UnsupportedOperatorError(
                    f"solver: DataInf needs per-sample gradients (curvature='gram'), got curvature={self.curvature!r}; "
                    "use invhvp.Exact() or invhvp.CG() for a Hessian or Gauss-Newton curvature"
                )
            self.solver = solver
            self.loss = loss
            self.on_failure = C.choice(on_failure, "on_failure", FAILURE_POLICIES)
            self._fit_cache: dict | None = None
            super().__init__(
                model,
                block_structure=BlockMode.FULL if block_structure is None else block_structure,
                regularization=damping,
            )

        # ------------------------------------------------------------- damping
        def _build_regularization_dict(self, regularization):
            # pyDVL 0.10's version rejects every valid dict (its subset test is inverted) and
            # any int; this one accepts a number or {block name: number or None}.
            if isinstance(regularization, dict):
                unknown = set(regularization) - set(self.block_names)
                if unknown:
                    raise InputError(
                        f"damping: unknown block name(s) {sorted(unknown)}; blocks are {self.block_names}"
                    )
                return {k: damping_value(regularization.get(k), f"damping[{k!r}]") for k in self.block_names}
            lam = damping_value(regularization, "damping")
            return {k: lam for k in self.block_names}

        def with_regularization(self, regularization):
            """Change the damping (a number or a dict by block name) and refactor each block's inverse."""
            self._regularization_dict = self._build_regularization_dict(regularization)
            if self.is_fitted:
                for k, reg in self._regularization_dict.items():
                    self.block_mapper.composable_block_dict[k].op.regularization = reg
            return self

        @staticmethod
        def _validate_regularization(block_name, value):
            return damping_value(value, f"damping[{block_name!r}]")

        # ------------------------------------------------------------- fitting
        def _create_block_mapper(self, data):
            # one pass over the data for all blocks: per-sample gradients (Gram) or the batches
            names = [n for block in self.parameter_dict.values() for n in block]
            if len(set(names)) != len(names):
                raise InputError("block_structure: a parameter appears in more than one block")
            if self.curvature == "gram":
                self._fit_cache = {"grads": gram_gradients(self.model, self.loss, data, names, self.dtype)}
            else:
                batches = [batch_xy(b) for b in data]
                if not batches:
                    raise InputError("data: yielded no batch")
                self._fit_cache = {"batches": batches}
            try:
                return super()._create_block_mapper(data)
            finally:
                self._fit_cache = None

        def _create_block(self, block_params, data, regularization):
            # The curvature's coordinates must follow the gradient provider's flattening.  pyDVL's
            # ``TorchGradientProvider.to`` (called on every block by ``fit``) re-collects the
            # parameters in the *model's* order, whatever order the block structure lists them
            # in; settle that order first and build the curvature in it.
            gp = TorchGradientProvider(self.model, self.loss, restrict_to=block_params).to(self.device)
            names = list(gp.params_to_restrict_to)
            cache = self._fit_cache or {}  # empty when called outside fit
            grads = cache.get("grads")
            if self.curvature == "gram" and grads is None:
                grads = gram_gradients(self.model, self.loss, data, names, self.dtype)
            batches = cache.get("batches") or (None if self.curvature == "gram" else [batch_xy(b) for b in data])
            numels = {n: p.numel() for n, p in block_params.items()}
            curv = curvature_operator(self.curvature, self.model, self.loss, names, numels, grads=grads, batches=batches)
            op = InvhvpOperator(curv, self.solver, regularization, self.on_failure)
            return TorchOperatorGradientComposition(op, gp)

        # ------------------------------------------------------------- reports
        @property
        def inverses(self) -> OrderedDict:
            """Block name → the fitted :class:`~invhvp.Inverse` (empty before ``fit``)."""
            if not self.is_fitted:
                return OrderedDict()
            return OrderedDict((k, b.op.inverse) for k, b in self.block_mapper.composable_block_dict.items())

        @property
        def results(self) -> list:
            """``(block name, SolveResult)`` of every solve so far, block by block."""
            if not self.is_fitted:
                return []
            return [(k, r) for k, b in self.block_mapper.composable_block_dict.items() for r in b.op.results]

        @property
        def is_thread_safe(self) -> bool:
            return False

else:  # pragma: no cover - exercised in the main environment (no pyDVL)

    def __getattr__(name):
        if name in ("InvhvpInfluence", "InvhvpOperator"):
            raise ImportError(_INSTALL_HINT) from _IMPORT_ERROR
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

