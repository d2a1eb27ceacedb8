"""Spec Book `math_book`: arithmetic, so results depend on the arguments."""


def add(a, b):
    return a + b


def div(a, b):
    return a / b


def total(values, start=0):
    return sum(values, start)
