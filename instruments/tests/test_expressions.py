"""Derived-channel expressions: what parses, what is refused, and what evaluation computes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from instruments.expressions import MAX_LENGTH, ExpressionError, evaluate, parse_expression

FUNCTIONS_ALLOWED = (
    "only these functions may be called: abs, arccos, arcsin, arctan, arctan2, cos, degrees, exp, log, log10, "
    "maximum, minimum, radians, sin, sqrt, tan"
)


def compute(expression: str, **variables) -> np.ndarray:
    tree, names = parse_expression(expression)
    assert names <= set(variables)
    return evaluate(tree, {name: np.asarray(values, dtype=np.float64) for name, values in variables.items()})


def test_mean_of_two_channels():
    tree, names = parse_expression("(t1 + t2) / 2")
    assert names == {"t1", "t2"}
    result = evaluate(tree, {"t1": np.array([1.0, 2.0, -4.0]), "t2": np.array([3.0, 5.0, 4.0])})
    np.testing.assert_array_equal(result, [2.0, 3.5, 0.0])
    assert result.dtype == np.float64


def test_wind_speed_from_components():
    _, names = parse_expression("sqrt(u*u + v*v)")
    assert names == {"u", "v"}
    np.testing.assert_allclose(compute("sqrt(u*u + v*v)", u=[3.0, 0.0, -5.0], v=[4.0, 2.0, 12.0]), [5.0, 2.0, 13.0])


def test_constants_and_functions_are_not_channel_names():
    _, names = parse_expression("degrees(arctan2(v, u)) + pi * 0 + e * 0 + abs(t)")
    assert names == {"u", "v", "t"}


def test_constants_have_their_values():
    np.testing.assert_allclose(compute("x * pi + e", x=[1.0, 2.0]), [math.pi + math.e, 2 * math.pi + math.e])


def test_numeric_constants_unary_operators_power_and_modulo():
    np.testing.assert_allclose(compute("-x ** 2 + 7 % 4 + +1.5", x=[2.0, 3.0]), [-4.0 + 3 + 1.5, -9.0 + 3 + 1.5])


def test_expression_of_constants_only():
    tree, names = parse_expression("2 * (3 + 4.5)")
    assert names == set()
    assert float(evaluate(tree, {})) == 15.0


def test_functions_work_element_wise():
    np.testing.assert_allclose(compute("maximum(a, b) - minimum(a, b)", a=[1.0, 9.0], b=[4.0, 2.0]), [3.0, 7.0])
    np.testing.assert_allclose(compute("log10(x)", x=[1.0, 1000.0]), [0.0, 3.0])
    np.testing.assert_allclose(compute("degrees(radians(x))", x=[90.0, -45.0]), [90.0, -45.0])


def test_undefined_results_are_nan_not_errors():
    result = compute("sqrt(x) + x / y", x=[-1.0, 4.0], y=[1.0, 0.0])
    assert math.isnan(result[0])
    assert math.isinf(result[1])


def test_evaluate_does_not_modify_the_input_arrays():
    t1, t2 = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    tree, _ = parse_expression("(t1 + t2) / 2")
    evaluate(tree, {"t1": t1, "t2": t2})
    np.testing.assert_array_equal(t1, [1.0, 2.0])
    np.testing.assert_array_equal(t2, [3.0, 4.0])


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("lambda: 1", "Lambda is not allowed in an expression"),
        ("t1.real", "Attribute is not allowed in an expression"),
        ("t1[0]", "Subscript is not allowed in an expression"),
        ("[x for x in t1]", "ListComp is not allowed in an expression"),
        ("sum(x for x in t1)", FUNCTIONS_ALLOWED),
        ("'abc'", "only numbers may appear as constants, not 'abc'"),
        ("t1 + b'x'", "only numbers may appear as constants, not b'x'"),
        ("True + t1", "only numbers may appear as constants, not True"),
        ("sqrt(x=t1)", "functions take positional arguments only"),
        ("unknown_function(t1)", FUNCTIONS_ALLOWED),
        ("__import__('os')", FUNCTIONS_ALLOWED),
        ("np.sqrt(t1)", FUNCTIONS_ALLOWED),
        ("t1 if t2 else 0", "IfExp is not allowed in an expression"),
        ("t1 < t2", "Compare is not allowed in an expression"),
        ("t1 and t2", "BoolOp is not allowed in an expression"),
        ("t1 // 2", "the operator FloorDiv is not allowed"),
        ("~t1", "the operator Invert is not allowed"),
        ("(t1 := 3)", "NamedExpr is not allowed in an expression"),
        ("(t1 + ", "not a valid expression: '(' was never closed at character 1"),
        ("   ", "the expression is empty"),
        ("t1 + " * 100 + "1", f"the expression is longer than {MAX_LENGTH} characters"),
    ],
)
def test_refused_constructs(expression, message):
    with pytest.raises(ExpressionError) as excinfo:
        parse_expression(expression)
    assert str(excinfo.value) == message


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("sqrt(t1, t2)", "sqrt() takes 1 argument, not 2"),
        ("arctan2(t1)", "arctan2() takes 2 arguments, not 1"),
        ("minimum(t1, t2, 0)", "minimum() takes 2 arguments, not 3"),
        ("sqrt()", "sqrt() takes 1 argument, not 0"),
    ],
)
def test_functions_are_refused_with_the_wrong_number_of_arguments(expression, message):
    # numpy would take a second argument to sqrt as the array to write the result into.
    with pytest.raises(ExpressionError) as excinfo:
        parse_expression(expression)
    assert str(excinfo.value) == message


@pytest.mark.parametrize(("expression", "name"), [("sqrt", "sqrt"), ("t1 + abs", "abs"), ("log * 2", "log")])
def test_a_function_that_is_not_called_is_refused(expression, name):
    with pytest.raises(ExpressionError) as excinfo:
        parse_expression(expression)
    assert str(excinfo.value) == f"{name} is a function and must be called, e.g. {name}(x)"
