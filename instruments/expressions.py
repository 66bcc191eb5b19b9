"""Safe arithmetic expressions for derived channels, e.g. ``(t1 + t2) / 2`` or ``sqrt(u*u + v*v)``.

Expressions are parsed with :mod:`ast` and only a whitelist of node types and functions is accepted;
nothing is ever passed to ``eval``. Evaluation works element-wise on numpy arrays.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

FUNCTIONS: dict[str, np.ufunc] = {
    "abs": np.abs,
    "sqrt": np.sqrt,
    "exp": np.exp,
    "log": np.log,
    "log10": np.log10,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "arcsin": np.arcsin,
    "arccos": np.arccos,
    "arctan": np.arctan,
    "arctan2": np.arctan2,
    "degrees": np.degrees,
    "radians": np.radians,
    "minimum": np.minimum,
    "maximum": np.maximum,
}
CONSTANTS = {"pi": np.pi, "e": np.e}
BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
}
UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_LENGTH = 500


class ExpressionError(ValueError):
    pass


def parse_expression(source: str) -> tuple[ast.Expression, set[str]]:
    """The checked syntax tree and the channel names the expression reads."""
    if not source or not source.strip():
        raise ExpressionError("the expression is empty")
    if len(source) > MAX_LENGTH:
        raise ExpressionError(f"the expression is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"not a valid expression: {exc.msg} at character {exc.offset}") from None
    names: set[str] = set()
    called: set[int] = set()  # ids of the Name nodes in call position (ast.walk visits a Call before them)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Expression, ast.Load)) or type(node) in BINARY or type(node) in UNARY:
            continue
        if isinstance(node, ast.BinOp):
            if type(node.op) not in BINARY:
                raise ExpressionError(f"the operator {type(node.op).__name__} is not allowed")
        elif isinstance(node, ast.UnaryOp):
            if type(node.op) not in UNARY:
                raise ExpressionError(f"the operator {type(node.op).__name__} is not allowed")
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                allowed = ", ".join(sorted(FUNCTIONS))
                raise ExpressionError(f"only these functions may be called: {allowed}")
            if node.keywords:
                raise ExpressionError("functions take positional arguments only")
            # A surplus argument would be numpy's ``out``: the result written over a channel's data.
            arity = FUNCTIONS[node.func.id].nin
            if len(node.args) != arity:
                raise ExpressionError(
                    f"{node.func.id}() takes {arity} argument{'s' if arity > 1 else ''}, not {len(node.args)}"
                )
            called.add(id(node.func))
        elif isinstance(node, ast.Name):
            if node.id in FUNCTIONS and id(node) not in called:
                raise ExpressionError(f"{node.id} is a function and must be called, e.g. {node.id}(x)")
            if node.id not in FUNCTIONS and node.id not in CONSTANTS:
                names.add(node.id)
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise ExpressionError(f"only numbers may appear as constants, not {node.value!r}")
        else:
            raise ExpressionError(f"{type(node).__name__} is not allowed in an expression")
    return tree, names


def evaluate(tree: ast.Expression, variables: Mapping[str, np.ndarray]) -> np.ndarray:
    """Evaluate a tree from :func:`parse_expression` element-wise over aligned arrays."""

    def visit(node: ast.AST):
        if isinstance(node, ast.Expression):
            return visit(node.body)
        if isinstance(node, ast.BinOp):
            return BINARY[type(node.op)](visit(node.left), visit(node.right))
        if isinstance(node, ast.UnaryOp):
            return UNARY[type(node.op)](visit(node.operand))
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)  # parse_expression allows calls of named functions only
            return FUNCTIONS[node.func.id](*(visit(arg) for arg in node.args))
        if isinstance(node, ast.Name):
            if node.id in CONSTANTS:
                return CONSTANTS[node.id]
            return np.asarray(variables[node.id], dtype=np.float64)
        if isinstance(node, ast.Constant):
            assert isinstance(node.value, int | float)  # parse_expression allows numbers only
            return float(node.value)
        raise ExpressionError(f"{type(node).__name__} is not allowed")  # parse_expression rules this out

    with np.errstate(all="ignore"):
        return np.asarray(visit(tree), dtype=np.float64)


# --- curves on a plot: expressions over channels of any instruments (instrument-slug/channel-slug) ----------

MAX_INPUTS = 12
# instrument-slug/channel-slug, not inside a longer name/name/... chain, starting with a letter (2/3 is a division)
REFERENCE = re.compile(r"(?<![\w/.-])([A-Za-z][\w-]*)/([A-Za-z][\w-]*)(?![\w/.(-])")


def references(expression: str) -> tuple[str, list[str]]:
    """The expression with each channel reference replaced by a variable (``_c0``...), and the references
    in order. Raises ExpressionError when it names no channel or too many."""
    refs: list[str] = []

    def swap(match: re.Match) -> str:
        ref = f"{match.group(1)}/{match.group(2)}"
        if ref not in refs:
            refs.append(ref)
        return f"_c{refs.index(ref)}"

    rewritten = REFERENCE.sub(swap, expression)
    if not refs:
        raise ExpressionError("name at least one channel as instrument-slug/channel-slug (a/temp - b/temp)")
    if len(refs) > MAX_INPUTS:
        raise ExpressionError(f"at most {MAX_INPUTS} channels in an expression")
    return rewritten, refs


def parse_curve(expression: str) -> tuple[ast.Expression, list[str]]:
    """The checked tree of a plot's expression curve (its channels as ``_c0``...) and the channel references
    it reads, in order; ExpressionError saying why for one that cannot be drawn. Whether the channels exist
    and may be seen is decided when it is drawn, by whoever draws it."""
    rewritten, refs = references(expression)
    tree, names = parse_expression(rewritten)
    unknown = sorted(n for n in names if not re.fullmatch(r"_c\d+", n))
    if unknown:
        raise ExpressionError(
            f"{', '.join(unknown)}: not a channel; write channels as instrument-slug/channel-slug, "
            "with spaces around / and - between two channels"
        )
    return tree, refs
