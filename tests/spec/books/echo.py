"""Spec Book `echo`: hands back exactly the arguments it received, after the JSON trip."""


def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


def constant(value=None):
    return value


# Procedure names that are refused as attributes of values are fine on a Book.
def send(message):
    return {"sent": message}


def format(template, **fields):
    return {"template": template, "fields": fields}
