"""Which calls suspend, and which functions may suspend.

A suspension point is a Book call, `sleep(...)`, `checkpoint()`, `artifact(...)`, or a
call that may reach a function that suspends. Callees are classified statically:

- `BOOK.proc(...)` is a Book call; `x.method(...)` on any other value is a method of a
  built-in value type and never suspends;
- a name bound only by `def` statements calls those functions;
- an unshadowed builtin never suspends (except those of `SUSPENDING_BUILTINS`);
- anything else (a parameter, a variable, a subscript, a call's result) is unknown and
  treated as possibly suspending: the engine then decides at run time.

A function (or lambda, or the module's top level) may suspend if its own code holds a
suspension point or calls, by name, a function that may suspend: a fixed point over
the call graph. Comprehensions belong to the function that contains them.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from jarvis.compiler.language import BUILTINS, SUSPENDING_BUILTINS
from jarvis.compiler.lower.scopes import Scope, ScopeTable
from jarvis.compiler.validate import book_imports

INTERNAL_PREFIX = "_jv_"


@dataclass
class SuspensionInfo:
    """The result of the analysis."""

    # id(Call) of every call that is a suspension point.
    sites: set[int] = field(default_factory=set)
    # id of every expression or statement node that contains a suspension point
    # (not looking into nested functions and lambdas).
    contains: set[int] = field(default_factory=set)
    # id(FunctionDef | Lambda | Module) of every function that may suspend.
    resumable: set[int] = field(default_factory=set)
    # Calls of builtins with an argument that names a function that may suspend.
    callback_misuse: list[tuple[ast.Call, ast.AST]] = field(default_factory=list)


def _owner(scope: Scope) -> Scope:
    """The function-like scope whose frame runs this scope's code."""
    while scope.kind == "comprehension" and scope.parent is not None:
        scope = scope.parent
    return scope


class _Analysis:
    def __init__(self, tree: ast.Module, scopes: ScopeTable) -> None:
        self.tree = tree
        self.scopes = scopes
        self.books = set(book_imports(tree))
        # For each (scope, name): the def nodes binding it, or None if bound otherwise.
        self.defs: dict[tuple[int, str], list[ast.FunctionDef | ast.Lambda] | None] = {}
        self.info = SuspensionInfo()
        # owner function id -> (direct suspension?, callee function node ids)
        self.direct: dict[int, bool] = {}
        self.calls: dict[int, set[int]] = {}
        self.call_callees: dict[int, list[int] | None] = {}

    # -- bindings -------------------------------------------------------------------

    def collect_bindings(self) -> None:
        scopes = self.scopes
        for scope in scopes.module.function_scopes():
            for name in scope.bound:
                self.defs[(id(scope.node), name)] = []
        # `name = lambda ...` binds a known function just as `def name` does.
        lambda_targets: set[int] = set()
        for node, scope in scopes.binders:
            function: ast.FunctionDef | ast.Lambda | None = None
            key_name = ""
            if isinstance(node, ast.FunctionDef):
                function, key_name = node, node.name
            elif (isinstance(node, ast.Assign) and len(node.targets) == 1
                  and isinstance(node.targets[0], ast.Name)
                  and isinstance(node.value, ast.Lambda)):
                function, key_name = node.value, node.targets[0].id
                lambda_targets.add(id(node.targets[0]))
            if function is not None:
                current = self.defs.get((id(scope.node), key_name))
                if current is not None:
                    current.append(function)
        for name_node, scope in scopes.name_nodes:
            if isinstance(name_node.ctx, ast.Store) and id(name_node) not in lambda_targets:
                self.defs[(id(scope.node), name_node.id)] = None
        for node, scope in scopes.binders:
            if isinstance(node, ast.ExceptHandler) and node.name:
                self.defs[(id(scope.node), node.name)] = None
            elif isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    self.defs[(id(scope.node), alias.asname or alias.name)] = None
        for scope in scopes.module.function_scopes():
            for param in scope.params:
                self.defs[(id(scope.node), param)] = None

    # -- classification -------------------------------------------------------------

    def callee_functions(self, call: ast.Call, scope: Scope) -> list[int] | None:
        """Function node ids a call may reach; [] for builtins/methods; None if unknown."""
        func = call.func
        if isinstance(func, ast.Attribute):
            return []
        if isinstance(func, ast.Lambda):
            return [id(func)]
        if not isinstance(func, ast.Name):
            return None
        defining = self.scopes.resolution.get(id(func), None)
        key_scope = defining.node if defining is not None else self.tree
        bindings = self.defs.get((id(key_scope), func.id), "absent")
        if bindings == "absent":
            if func.id in BUILTINS or func.id.startswith(INTERNAL_PREFIX):
                return []  # a builtin, or a runtime hook such as the tracer's
            return None
        if bindings is None or isinstance(bindings, str):
            return None
        return [id(node) for node in bindings]

    def is_book_call(self, call: ast.Call) -> bool:
        func = call.func
        return (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id in self.books
        )

    def is_suspending_builtin(self, call: ast.Call, scope: Scope) -> bool:
        func = call.func
        if not isinstance(func, ast.Name) or func.id not in SUSPENDING_BUILTINS:
            return False
        defining = self.scopes.resolution.get(id(func))
        return defining is None and (id(self.tree), func.id) not in self.defs

    # -- the fixed point ------------------------------------------------------------

    def run(self) -> SuspensionInfo:
        self.collect_bindings()
        owners: dict[int, Scope] = {}
        for scope in self.scopes.module.function_scopes():
            owner = _owner(scope)
            owners[id(owner.node)] = owner
            self.direct.setdefault(id(owner.node), False)
            self.calls.setdefault(id(owner.node), set())
        calls = self.scopes.calls
        for call, scope in calls:
            owner_id = id(_owner(scope).node)
            if self.is_book_call(call) or self.is_suspending_builtin(call, scope):
                self.info.sites.add(id(call))
                self.direct[owner_id] = True
                continue
            callees = self.callee_functions(call, scope)
            self.call_callees[id(call)] = callees
            if callees is None:
                self.direct[owner_id] = True
            else:
                self.calls[owner_id].update(callees)
        resumable = {fid for fid, direct in self.direct.items() if direct}
        changed = True
        while changed:
            changed = False
            for fid, reached in self.calls.items():
                if fid not in resumable and reached & resumable:
                    resumable.add(fid)
                    changed = True
        self.info.resumable = resumable
        for call, _scope in calls:
            callees = self.call_callees.get(id(call), [])
            if callees is None or (callees and set(callees) & resumable):
                self.info.sites.add(id(call))
            elif callees == [] and not self.is_book_call(call):
                self.check_callbacks(call, _scope, resumable)
        self.mark_contains()
        return self.info

    def check_callbacks(self, call: ast.Call, scope: Scope, resumable: set[int]) -> None:
        """A builtin given a function that may suspend would call it where it cannot."""
        if isinstance(call.func, ast.Attribute) or not isinstance(call.func, ast.Name):
            return
        if call.func.id.startswith(INTERNAL_PREFIX):
            return  # the compiler's own helpers and trace hooks never call their arguments
        arguments = [*call.args, *(k.value for k in call.keywords)]
        for argument in arguments:
            value = argument.value if isinstance(argument, ast.Starred) else argument
            if isinstance(value, ast.Lambda) and id(value) in resumable:
                self.info.callback_misuse.append((call, value))
            elif isinstance(value, ast.Name):
                callees = self.callee_functions(ast.Call(func=value, args=[], keywords=[]), scope)
                if callees and set(callees) & resumable:
                    self.info.callback_misuse.append((call, value))

    def mark_contains(self) -> None:
        """Mark every node on the path from a function body down to a suspension site."""
        sites = self.info.sites
        contains = self.info.contains
        functions = (ast.FunctionDef, ast.Lambda)

        def visit(node: ast.AST) -> bool:
            found = id(node) in sites
            fields = node.__dict__
            for name in node._fields:
                value = fields.get(name)
                children = value if type(value) is list else (value,)
                for child in children:
                    if not isinstance(child, ast.AST) or not child._fields:
                        continue  # a name or a constant, a context, an operator
                    if isinstance(child, functions):
                        # Only the parts evaluated here (defaults) count.
                        for default in [*child.args.defaults, *child.args.kw_defaults]:
                            if default is not None and visit(default):
                                found = True
                        visit_function(child)
                    elif visit(child):
                        found = True
            if found:
                contains.add(id(node))
            return found

        def visit_function(node: ast.FunctionDef | ast.Lambda) -> None:
            if isinstance(node, ast.FunctionDef):
                for statement in node.body:
                    visit(statement)
            else:
                visit(node.body)

        for statement in self.tree.body:
            visit(statement)


def analyse_suspension(tree: ast.Module, scopes: ScopeTable) -> SuspensionInfo:
    """Find the suspension points and the functions that may suspend."""
    return _Analysis(tree, scopes).run()
