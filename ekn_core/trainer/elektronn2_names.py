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


def _is_main_block(node: ast.AST) -> bool:
    """``if __name__ == "__main__":`` (it does not run when ekn loads a config)."""
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__" and len(test.comparators) == 1
            and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value == "__main__")


def _submodule(module: str) -> str:
    """``'neuromancer'`` for ``'elektronn2.neuromancer.model'``; ``''`` for ``'elektronn2'``."""
    return module.split(".")[1] if "." in module else ""


def _other(submodule: str) -> str:
    return NO_COUNTERPART.get(submodule, f"ekn has no counterpart of {PACKAGE}.{submodule}; nodes and model files "
                              f"are in {NEUROMANCER}, volumes in ekn_core.volumes (docs/api.md)")


def _replacement(node: ast.Import | ast.ImportFrom) -> str:
    """What replaces one import statement that names ELEKTRONN2."""
    if isinstance(node, ast.ImportFrom):
        sub = _submodule(node.module or "")
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
        if sub in ("neuromancer", ""):
            lines.append(repr(f"import {NEUROMANCER} as {alias.asname or 'nm'}") +
                         ("" if alias.asname else f" (and write nm. where the code says {PACKAGE}.neuromancer.)"))
        else:
            lines.append(_other(sub))
    return "; ".join(lines)


def _imports_elektronn2(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level == 0 and (node.module or "").split(".")[0] == PACKAGE
    return isinstance(node, ast.Import) and any(a.name.split(".")[0] == PACKAGE for a in node.names)


def import_problems(source: str) -> list[str]:
    """The statements of a config's source that import ELEKTRONN2 (anywhere but in an
    ``if __name__ == "__main__":`` block), each as ``"line N: 'statement' → replacement"``; empty
    when there are none or the source does not parse (running it then says why).

    Example:
        >>> import_problems("from elektronn2.neuromancer.model import modelload\\nimport numpy")
        ["line 1: 'from elektronn2.neuromancer.model import modelload' → 'from ekn_core.neuromancer import modelload'"]
        >>> import_problems("from elektronn2.utils import h5load")[0].split(" → ")[1][:27]
        'ekn has no h5load/h5save: r'
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    problems = []
    todo: list[ast.AST] = [n for n in tree.body if not _is_main_block(n)]
    while todo:
        node = todo.pop()
        todo.extend(ast.iter_child_nodes(node))
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
    file): which of its settings are experiment-config settings in ekn and which ekn ignores.
    The file is parsed, not run. None when there is no file.

    Example:
        >>> import tempfile
        >>> rc = os.path.join(tempfile.mkdtemp(), ".elektronn2rc")
        >>> _ = open(rc, "w").write("device = 1\\nuse_manual_cudnn_conv = False\\n")
        >>> print(rc_file_warning(rc))  # doctest: +ELLIPSIS
        /.../.elektronn2rc (ELEKTRONN2's user-wide defaults) is not read by ekn, which has no such file. ...
    """
    from ekn_core.trainer.config import IGNORED, SETTINGS

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
    settings = [n for n in names if n in SETTINGS]
    ignored = [f"{n} ({IGNORED[n]})" for n in names if n in IGNORED]
    others = [n for n in names if n not in SETTINGS and n not in IGNORED]
    text = f"{path} (ELEKTRONN2's user-wide defaults) is not read by ekn, which has no such file{unreadable}."
    if settings:
        text += (f" Experiment-config settings in ekn (set them in the config or with --set NAME=VALUE): "
                 f"{', '.join(settings)}.")
    if ignored:
        text += f" Ignored by ekn: {', '.join(ignored)}."
    if others:
        text += f" Not ekn settings: {', '.join(others)}."
    text += (f" ekn's defaults differ: save_path {SETTINGS['save_path'].default!r} (ELEKTRONN2 "
             f"'~/elektronn2_training/'), overwrite {SETTINGS['overwrite'].default} (ELEKTRONN2 True).")
    return text
