"""ELEKTRONN2 names that ekn replaces, each with a hint naming ekn's: the import lines of an
experiment config (:func:`import_problems`, checked before the config runs, and
:func:`missing_module_hint` for one imported by a helper file), the variables of ELEKTRONN2's
training shell (:data:`SHELL_NAMES`) and its user-wide defaults file ``~/.elektronn2rc``, which
ekn does not read (:func:`rc_file_warning`).

Example:
    >>> import_problems("def create_model():\\n    from elektronn2 import neuromancer as nm\\n")
    ["line 2: 'from elektronn2 import neuromancer as nm' → 'import ekn_core.neuromancer as nm'"]
    >>> SHELL_NAMES["exp_config"]
    'config'
"""

from __future__ import annotations

import ast
import os

#: ELEKTRONN2's top-level package.
PACKAGE = "elektronn2"

#: What ELEKTRONN2's ``h5load`` and ``h5save`` (``elektronn2.utils``) are in ekn.
H5_HINT = ("ekn has no h5load/h5save: read a dataset with ekn_core.volumes.open_volume('file.h5:key')[:] and write "
           "one with create_volume('file.h5:key', shape, dtype)[...] = data (docs/data.md)")

#: ELEKTRONN2 modules without an ekn module of their own, and where their jobs went.
NO_COUNTERPART = {
    "utils": H5_HINT,
    "config": "ELEKTRONN2's global settings are experiment-config settings in ekn (docs/training.md)",
    "data": "the data source is named by data_class = 'BatchCreatorImage' (or another ekn.data name) with "
            "data_init_kwargs; ekn builds it",
    "training": "the trainer is `ekn train CONFIG`; the config needs no trainer import",
}

#: Variables of ELEKTRONN2's training shell and what to write in ekn's (``help`` lists its names).
SHELL_NAMES = {
    "exp_config": "config",
    "i": "step",
    "self": "trainer",
    "loss": "trainer.last_metrics['loss']",
    "t_passed": "trainer.elapsed",
}

#: The ekn line that replaces ``from elektronn2 import neuromancer``.
NEUROMANCER = "ekn_core.neuromancer"


#: Exceptions whose ``except`` makes a ``try`` body an optional import (a fallback runs instead).
IMPORT_GUARDS = ("ImportError", "ModuleNotFoundError", "Exception", "BaseException")


def _is_main_test(test: ast.AST) -> bool:
    """``__name__ == "__main__"`` (either order): false when ekn loads a config."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return (any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
            and any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides))


def _is_type_checking(test: ast.AST) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``: false at run time."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _guards_imports(handler: ast.ExceptHandler) -> bool:
    """A bare ``except:`` or one that catches an ImportError (:data:`IMPORT_GUARDS`)."""
    caught = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return handler.type is None or any(isinstance(c, ast.Name) and c.id in IMPORT_GUARDS for c in caught)


def _running_children(node: ast.AST) -> list[ast.AST]:
    """The children of ``node`` whose imports must work when ekn loads the config: not the body of
    an ``if __name__ == "__main__":`` or ``if TYPE_CHECKING:`` block, nor the body (and ``else``) of
    a ``try`` that falls back when the import fails."""
    if isinstance(node, ast.If) and (_is_main_test(node.test) or _is_type_checking(node.test)):
        return list(node.orelse)
    if isinstance(node, ast.Try | getattr(ast, "TryStar", ast.Try)) and any(map(_guards_imports, node.handlers)):
        return [*node.handlers, *node.finalbody]
    return list(ast.iter_child_nodes(node))


def _submodule(module: str) -> str:
    """``'neuromancer'`` for ``'elektronn2.neuromancer.model'``; ``''`` for ``'elektronn2'``."""
    return module.split(".")[1] if "." in module else ""


def _other(submodule: str) -> str:
    return NO_COUNTERPART.get(submodule, f"ekn has no counterpart of {PACKAGE}.{submodule}; nodes and model files "
                              f"are in {NEUROMANCER}, volumes in ekn_core.volumes (docs/api.md)")


def _replacement(node: ast.Import | ast.ImportFrom) -> str:
    """What replaces one import statement that names ELEKTRONN2 (lines that work as they are, or
    with the names they bind written as ``nm.NAME``)."""
    if isinstance(node, ast.ImportFrom):
        sub = _submodule(node.module or "")
        if sub in ("neuromancer", "") and node.names[0].name == "*":  # ekn's nodes are not star-importable
            return (repr(f"import {NEUROMANCER} as nm") +
                    " (and write nm. before the names it gave: nm.Input, nm.Conv, nm.model_manager ...)")
        if sub == "neuromancer":
            return repr(f"from {NEUROMANCER} import {', '.join(ast.unparse(a) for a in node.names)}")
        if not sub:
            lines = [repr(f"import {NEUROMANCER} as {a.asname or a.name}") if a.name == "neuromancer"
                     else _other(a.name) for a in node.names]
            return "; ".join(lines)
        return _other(sub)
    lines = []
    for alias in node.names:
        sub = _submodule(alias.name)
        if alias.name.split(".")[0] != PACKAGE:
            continue
        if sub == "neuromancer" and alias.asname:
            lines.append(repr(f"import {NEUROMANCER} as {alias.asname}"))
        elif sub in ("neuromancer", ""):  # the code reaches the nodes as PACKAGE.neuromancer.NAME (or ALIAS.…)
            name = alias.asname or "nm"
            lines.append(repr(f"import {NEUROMANCER} as {name}") +
                         f" (and write {name}. where the code says {alias.asname or PACKAGE}.neuromancer.)")
        else:
            lines.append(_other(sub))
    return "; ".join(lines)


def _imports_elektronn2(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level == 0 and (node.module or "").split(".")[0] == PACKAGE
    return isinstance(node, ast.Import) and any(a.name.split(".")[0] == PACKAGE for a in node.names)


def import_problems(source: str) -> list[str]:
    """The statements of a config's source that import ELEKTRONN2, each as ``"line N: 'statement'
    → replacement"``; empty when there are none or the source does not parse (running it then says
    why). Imports that do not run when ekn loads the config are left alone: in an ``if __name__ ==
    "__main__":`` or ``if TYPE_CHECKING:`` block, or in a ``try`` whose ``except`` catches an
    ImportError (``except ImportError: import ekn_core.neuromancer as nm`` falls back to ekn).

    Example:
        >>> import_problems("from elektronn2.neuromancer.model import modelload\\nimport numpy")
        ["line 1: 'from elektronn2.neuromancer.model import modelload' → 'from ekn_core.neuromancer import modelload'"]
        >>> import_problems("from elektronn2.utils import h5load")[0].split(" → ")[1][:27]
        'ekn has no h5load/h5save: r'
        >>> import_problems("try:\\n    import elektronn2\\nexcept ImportError:\\n    pass\\n")
        []
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    problems = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        todo.extend(_running_children(node))
        if _imports_elektronn2(node):
            problems.append((node.lineno, f"line {node.lineno}: {ast.unparse(node)!r} → {_replacement(node)}"))
    return [text for _, text in sorted(problems)]


def missing_module_hint(err: BaseException) -> str:
    """A hint for ``ModuleNotFoundError: No module named 'elektronn2...'`` (an import in a file
    the config runs), else ``''``.

    Example:
        >>> missing_module_hint(ModuleNotFoundError("No module named 'elektronn2'", name="elektronn2"))[:35]
        '; ekn replaces ELEKTRONN2 and needs'
        >>> missing_module_hint(ModuleNotFoundError("No module named 'foo'", name="foo"))
        ''
    """
    name = getattr(err, "name", None) or ""
    if not isinstance(err, ModuleNotFoundError) or name.split(".")[0] != PACKAGE:
        return ""
    return (f"; ekn replaces ELEKTRONN2 and needs no {PACKAGE} module: import ekn's in the file that imports {name} "
            f"(e.g. 'import {NEUROMANCER} as nm' for 'from elektronn2 import neuromancer as nm'; {H5_HINT})")


def rc_file_warning(path: str = "~/.elektronn2rc") -> str | None:
    """What ``ekn train`` says when ELEKTRONN2's user-wide defaults file exists (ekn reads no such
    file): which of its settings are experiment-config settings in ekn (the core's and the loaded
    plugins') and which ekn ignores.
    The file is parsed, not run. None when there is no file.

    Example:
        >>> import tempfile
        >>> rc = os.path.join(tempfile.mkdtemp(), ".elektronn2rc")
        >>> _ = open(rc, "w").write("device = 1\\nuse_manual_cudnn_conv = False\\n")
        >>> print(rc_file_warning(rc))  # doctest: +ELLIPSIS
        /.../.elektronn2rc (ELEKTRONN2's user-wide defaults) is not read by ekn, which has no such file. ...
    """
    from ekn_core.trainer.config import IGNORED, all_settings

    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        names = list(dict.fromkeys(t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                                   for t in getattr(node, "targets", [getattr(node, "target", None)])
                                   if isinstance(t, ast.Name)))
    except (OSError, SyntaxError, ValueError) as err:
        names, unreadable = [], f" (it could not be read: {err})"
    else:
        unreadable = ""
    known = all_settings()  # the plugins' settings too
    settings = [n for n in names if n in known]
    ignored = [f"{n} ({IGNORED[n]})" for n in names if n in IGNORED]
    others = [n for n in names if n not in known and n not in IGNORED]
    text = f"{path} (ELEKTRONN2's user-wide defaults) is not read by ekn, which has no such file{unreadable}."
    if settings:
        text += (f" Experiment-config settings in ekn (set them in the config or with --set NAME=VALUE): "
                 f"{', '.join(settings)}.")
    if ignored:
        text += f" Ignored by ekn: {', '.join(ignored)}."
    if others:
        text += f" Not ekn settings: {', '.join(others)}."
    text += (f" ekn's defaults differ: save_path {known['save_path'].default!r} (ELEKTRONN2 "
             f"'~/elektronn2_training/'), overwrite {known['overwrite'].default} (ELEKTRONN2 True).")
    return text
