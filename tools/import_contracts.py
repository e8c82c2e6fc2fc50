"""import-linter contract types of this project (``lint-imports`` loads them from pyproject).

``private_names``: no module imports a private name (``_x``, not a dunder) from another module of
the package. A private helper is private to its module; what another module needs is public.
"""

from __future__ import annotations

import ast
import importlib.util

from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def absolute_module(importer: str, node: ast.ImportFrom, is_package: bool) -> str | None:
    """The module an ``ImportFrom`` names, relative ones (``from ._x import y``) resolved
    against the importing module, as Python resolves them (PEP 328)."""
    if node.level == 0:
        return node.module
    parts = importer.split(".") if is_package else importer.split(".")[:-1]
    base = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
    if not base:
        return None
    return ".".join([*base, node.module] if node.module else base)


class PrivateNamesContract(Contract):
    """Modules under ``packages`` import no private name from another module."""

    type_name = "private_names"
    packages = fields.ListField(subfield=fields.StringField())

    def check(self, graph, verbose: bool) -> ContractCheck:
        bad = []
        for module in sorted(graph.modules):
            if not self._inside(module):
                continue
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.origin or not spec.origin.endswith(".py"):
                continue
            is_package = spec.origin.endswith("__init__.py")
            tree = ast.parse(open(spec.origin, encoding="utf-8").read())
            for node in ast.walk(tree):
                if not isinstance(node, ast.ImportFrom):
                    continue
                imported = absolute_module(module, node, is_package)
                if imported and imported != module and self._inside(imported):
                    bad += [
                        (module, imported, a.name, node.lineno)
                        for a in node.names
                        if _private(a.name)
                    ]
        return ContractCheck(kept=not bad, metadata={"imports": bad})

    def _inside(self, module: str) -> bool:
        return any(module == p or module.startswith(p + ".") for p in self.packages)

    def render_broken_contract(self, check: ContractCheck) -> None:
        for importer, imported, name, line in check.metadata["imports"]:
            output.print_error(
                f"{importer}:{line} imports the private name {name} from {imported}", bold=False
            )
            output.new_line()
