"""Which model and which labelled volumes ``ekn evaluate`` takes from a run directory.

A run directory (``ekn train``'s ``save_path/save_name``) is evaluated with its best model
(``models/best.mdl``, else ``models/latest.mdl``) on the ``volume_validation`` volumes of its
resolved settings (``run.json``, after ``--set`` overrides). A model file inside a run's
``models/`` folder belongs to that run too. :func:`model_fingerprint` records which model file
was evaluated.

Example:
    >>> import os, tempfile
    >>> from ekn_core.trainer.rundir import RunDir
    >>> run = RunDir(os.path.join(tempfile.mkdtemp(), "exp"))
    >>> _ = run.create(); run.write_run_json({"settings": {}})
    >>> open(run.model_path("latest"), "wb").close()
    >>> chosen = resolve_model(run.path)
    >>> os.path.relpath(chosen.path, run.path), chosen.which, os.path.relpath(default_out_dir(chosen), run.path)
    ('models/latest.mdl', 'latest', 'evaluation/latest')
    >>> default_out_dir(resolve_model("nets/membrane.mdl")).endswith("nets/membrane.evaluation")
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any

from ekn_core.errors import ConfigError
from ekn_core.trainer.rundir import MODEL_EXT, RunDir
from ekn_core.volumes import split_key
from ekn_plugins.validation.spec import ValidationVolume, VolumeValidationSpec, parse_spec


@dataclass(frozen=True)
class ChosenModel:
    """The model to evaluate.

    Attributes:
        path: Model file (absolute) or ``module:factory`` as given.
        run: The run directory it belongs to, or None.
        which: ``'best'`` or ``'latest'`` when chosen from a run directory, else None.
    """

    path: str
    run: RunDir | None
    which: str | None


def resolve_model(model: str) -> ChosenModel:
    """A model file, a ``module:factory``, or a run directory (its ``models/best.mdl``, else
    ``models/latest.mdl``).

    Raises:
        ConfigError: A directory that is no run, or a run without a saved model.
    """
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        run = RunDir(expanded)
        if not run.exists():
            raise ConfigError(f"{model} is a directory but no ekn run directory (no run.json); give a model file "
                              "or the directory that `ekn train` created")
        for which in ("best", "latest"):
            if os.path.isfile(run.model_path(which)):
                return ChosenModel(run.model_path(which), run, which)
        raise ConfigError(f"run {run.path} has saved no model yet (neither models/best{MODEL_EXT} nor "
                          f"models/latest{MODEL_EXT}); train longer or give a model file")
    if not os.path.exists(expanded):
        return ChosenModel(model, None, None)  # module:factory, or a missing file the loader reports
    path = os.path.abspath(expanded)
    folder = os.path.dirname(path)
    run = RunDir(os.path.dirname(folder))
    in_run = os.path.basename(folder) == "models" and run.exists()
    return ChosenModel(path, run if in_run else None, None)


def default_out_dir(chosen: ChosenModel) -> str:
    """``<run>/evaluation/<model stem>/`` for a model of a run, else ``<model without .mdl>.evaluation/``
    beside the model (in the current directory for a ``module:factory``)."""
    if chosen.run is not None:
        stem = os.path.splitext(os.path.basename(chosen.path))[0]
        return chosen.run.join("evaluation", stem)
    base = chosen.path.removesuffix(MODEL_EXT)
    if not os.path.exists(chosen.path):
        base = base.replace(":", ".")  # module:factory
    return os.path.abspath(base + ".evaluation")


def model_fingerprint(chosen: ChosenModel) -> dict[str, Any]:
    """Path, run, size, modification time and SHA-256 of the evaluated model file."""
    record: dict[str, Any] = {"path": chosen.path, "run": chosen.run.path if chosen.run else None,
                              "which": chosen.which}
    if os.path.isfile(chosen.path):
        st = os.stat(chosen.path)
        digest = hashlib.sha256()
        with open(chosen.path, "rb") as f:
            for part in iter(lambda: f.read(2**20), b""):
                digest.update(part)
        record.update(size=st.st_size, mtime=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime)),
                      sha256=digest.hexdigest())
    return record


def run_validation_spec(run: RunDir) -> VolumeValidationSpec:
    """The run's ``volume_validation`` setting, parsed, with relative volume paths made absolute
    against the directory training was started in (``cwd`` in ``run.json``; the current directory
    for runs that did not record it).

    Raises:
        ConfigError: The run has no ``volume_validation`` volumes.
    """
    info = run.read_run_json()
    settings = info.get("settings", {})
    spec = parse_spec(settings.get("volume_validation"), settings.get("history_freq"))
    if spec is None:
        raise ConfigError(f"run {run.path} has no volume_validation volumes; give the volumes to evaluate: "
                          "ekn evaluate MODEL RAW --labels LABELS (or --ids IDS)")
    start = info.get("cwd") or os.getcwd()
    volumes = tuple(ValidationVolume(_absolute(v.raw, start), _absolute(v.labels, start), v.region, v.name,
                                     _absolute(v.ids, start)) for v in spec.volumes)
    return dataclasses.replace(spec, volumes=volumes)


def _absolute(path: str | None, start: str) -> str | None:
    """``path`` (``file:key`` too) against ``start`` when relative; URLs as they are."""
    if path is None or "://" in path:
        return path
    base, key = split_key(path)
    base = os.path.normpath(os.path.join(start, base))
    return f"{base}:{key}" if key else base
