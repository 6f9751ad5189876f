"""Curvature operators: Hessian and GGN of a model's loss as linear operators."""

from lanczos_optim.operators._base import CurvatureOperator
from lanczos_optim.operators.ggn import GGNOperator
from lanczos_optim.operators.hessian import HessianOperator

__all__ = ["CurvatureOperator", "GGNOperator", "HessianOperator"]
