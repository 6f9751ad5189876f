"""Every public name of both packages has a docstring with a runnable example.

The public names are the ``__all__`` of ``lanczos_optim``, ``diagnostics`` and each of their
subpackages (the rooms). ``make test`` runs the examples themselves (``--doctest-modules``);
this test makes sure none is missing.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types
import typing
from collections.abc import Callable

import pytest

PACKAGES = ("lanczos_optim", "diagnostics")


def _public_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names.append(package)
        names += [m.name for m in pkgutil.iter_modules(module.__path__, f"{package}.") if m.ispkg]
    return names


def _missing_examples(module: types.ModuleType) -> list[str]:
    """Public callables and classes of ``module`` whose own docstring has no ``>>>`` example."""
    missing = []
    for name in module.__all__:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or callable(obj)):
            continue  # constants (tuples of choices, strings) cannot carry a docstring
        if typing.get_origin(obj) is not None:
            # A type alias (``LossFn = Callable[...]``, ``typing.List[int]``) is a generic alias
            # of typing/collections.abc: callable, but its ``__doc__`` is read-only and not its
            # own, so it cannot carry an example. It is documented in its module's docstring.
            continue
        doc = obj.__doc__  # not inspect.getdoc: a class must not borrow its base's example
        if not doc or ">>>" not in doc:
            missing.append(name)
    return missing


def test_the_rooms_are_found() -> None:
    modules = _public_modules()
    for room in ("analysis", "cli", "plots", "results", "training"):
        assert f"diagnostics.{room}" in modules
    assert {"lanczos_optim.operators", "lanczos_optim.optimizers"} <= set(modules)


@pytest.mark.parametrize("name", _public_modules())
def test_every_public_name_has_an_example(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__all__, f"{name} states no public names"
    assert _missing_examples(module) == [], f"{name}: public names without a '>>>' example"


def test_the_check_finds_a_missing_example() -> None:
    def documented() -> None:
        """Do nothing.

        Example:
            >>> documented()
        """

    def undocumented() -> None:
        """Do nothing, without an example."""

    class Base:
        """A base.

        Example:
            >>> Base()  # doctest: +ELLIPSIS
            <...>
        """

    class Child(Base):
        pass

    fake = types.ModuleType("fake")
    fake.__all__ = ["documented", "undocumented", "Child", "CHOICES", "Alias", "Old", "bare"]
    fake.documented, fake.undocumented, fake.Child = documented, undocumented, Child
    fake.CHOICES = ("a", "b")
    fake.Alias, fake.Old = Callable[[int], int], typing.List[int]  # noqa: UP006 - typing's kind
    fake.bare = lambda: None
    assert _missing_examples(fake) == ["undocumented", "Child", "bare"]
