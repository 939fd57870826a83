"""How an imported model's module is rebuilt: a user's class (importable module or a .py file) with its
constructor kwargs, or an embedded torch.export program. The checkpoint's "source" entry names one of them
(written by nfedge.train.import_model, read by nfedge.train.checkpoint.load_checkpoint).

Only code the user names is imported: the named module, or the named file with its folder on sys.path while
it is imported (so it can import its neighbours, as it could when run as a script; the folder is removed from
sys.path afterwards). The checkpoint records the sha256 of every module file that import loaded from that folder,
and rebuilding refuses a changed one. Loading a class-sourced checkpoint imports that class again, so treat such a
checkpoint like code; an exported program holds no Python code.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nfedge.errors import NfedgeError
from nfedge.fileio import sha256_bytes, sha256_file

__all__ = ["CLASS_SOURCE", "PROGRAM_SOURCE", "class_file", "import_class", "class_source_file", "folder_files",
           "check_folder_files", "construct", "load_program", "rebuild_module", "first_line"]

CLASS_SOURCE, PROGRAM_SOURCE = "class", "exported-program"
FOLDER_FILES = "__nfedge_folder_files__"  # set on a file-loaded module: the files its import loaded from its folder


def class_file(where: str) -> Path | None:
    """The absolute path of a "path/to/file.py" class location; None for a "package.module" one."""
    return Path(where).expanduser().resolve() if where.endswith(".py") or "/" in where or "\\" in where else None


def import_class(spec: str) -> type[nn.Module]:
    """The class named by "package.module:Class" or "path/to/file.py:Class" (nothing else is imported)."""
    where, _, attr = spec.rpartition(":")
    path = class_file(where)
    if path is not None:
        if not path.is_file():
            raise NfedgeError(f"model class file {path} does not exist")
        mod_name = _module_name(path)
        module = sys.modules.get(mod_name) or _exec_file(path, mod_name)
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as e:
            raise NfedgeError(f"cannot import module {where!r} ({first_line(e)}; is it installed or on PYTHONPATH?)") from None
        except Exception as e:  # noqa: BLE001 - the user's module may raise anything
            raise NfedgeError(f"importing {where} failed: {type(e).__name__}: {first_line(e)}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise NfedgeError(f"{where} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise NfedgeError(f"{spec} is not a torch.nn.Module subclass")
    return obj


def _module_name(path: Path) -> str:
    # Named after the file's content: a changed file is a new module, never a stale cached one.
    return f"nfedge_user_{sha256_file(path)[:12]}"


def _exec_file(path: Path, mod_name: str) -> types.ModuleType:
    """Import the file as module `mod_name`, its folder first on sys.path during the import only; the module
    remembers the files it loaded from that folder (FOLDER_FILES: path relative to the folder -> sha256)."""
    folder = str(path.parent)
    file_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(file_spec)
    sys.modules[mod_name] = module  # dataclasses and pickling look classes up there
    before = set(sys.modules)
    importlib.invalidate_caches()  # a neighbour written just now must be found
    sys.path.insert(0, folder)
    try:
        file_spec.loader.exec_module(module)
    except BaseException as e:
        del sys.modules[mod_name]
        hint = f" (its folder {folder} is importable during the import; other modules must be installed or on " \
               "PYTHONPATH)" if isinstance(e, ModuleNotFoundError) else ""
        raise NfedgeError(f"importing {path} failed: {type(e).__name__}: {first_line(e)}{hint}") from None
    finally:
        if folder in sys.path:  # the user's code may have removed it itself
            sys.path.remove(folder)
    loaded = [path] + [Path(f) for m in set(sys.modules) - before if (f := getattr(sys.modules[m], "__file__", None))]
    setattr(module, FOLDER_FILES, {str(f.resolve().relative_to(path.parent)): sha256_file(f)
                                   for f in sorted(set(loaded)) if f.resolve().is_relative_to(path.parent)})
    return module


def folder_files(path: Path) -> dict[str, str] | None:
    """{path relative to its folder: sha256} of the module files that importing the class file `path` loaded from
    its folder (the file itself included), once import_class has imported it; else None."""
    files = getattr(sys.modules.get(_module_name(path)), FOLDER_FILES, None)
    return dict(files) if files is not None else None


def check_folder_files(base: Path, files: dict[str, str], what: str) -> None:
    """Refuse to rebuild when a module file recorded at import is gone or changed (edits to a neighbour count)."""
    for rel, digest in files.items():
        f = base / rel
        if not f.is_file():
            raise NfedgeError(f"{what}: {f}, imported with the model, no longer exists; import the model again")
        if sha256_file(f) != digest:
            raise NfedgeError(f"{what}: {f} changed since the model was imported (sha256 differs); import it again")


def class_source_file(cls: type) -> Path | None:
    f = getattr(sys.modules.get(cls.__module__), "__file__", None)
    return Path(f) if f else None


def construct(cls: type[nn.Module], kwargs: dict[str, Any]) -> nn.Module:
    try:
        return cls(**kwargs)
    except Exception as e:  # noqa: BLE001
        raise NfedgeError(f"{cls.__name__}(**{kwargs}) failed: {type(e).__name__}: {first_line(e)}") from None


def load_program(data: bytes, what: str) -> nn.Module:
    """The inference module of a torch.export program. Its train/eval behaviour (BatchNorm, Dropout) was
    fixed when it was exported, so train()/eval() only set the flags instead of raising as torch's do."""
    try:
        gm = torch.export.load(io.BytesIO(data)).module()
    except Exception as e:  # noqa: BLE001
        raise NfedgeError(f"{what} is not a loadable torch.export program ({type(e).__name__}: {first_line(e)})") from None

    def set_mode(self: nn.Module, mode: bool = True) -> nn.Module:
        for m in self.modules():
            m.training = mode
        return self

    gm.train = types.MethodType(set_mode, gm)
    gm.eval = types.MethodType(lambda self: self.train(False), gm)
    return gm


def rebuild_module(source: dict[str, Any], what: str) -> nn.Module:
    """The module an imported checkpoint's "source" describes (its weights come from the state dict)."""
    kind = source.get("kind")
    if kind == PROGRAM_SOURCE:
        data = source["program"]
        if sha256_bytes(data) != source["sha256"]:
            raise NfedgeError(f"{what}: embedded exported program is corrupt (sha256 differs)")
        return load_program(data, what)
    if kind == CLASS_SOURCE:
        cls = import_class(source["class"])
        f = class_source_file(cls)
        if source.get("file_sha256") and f is not None and sha256_file(f) != source["file_sha256"]:
            raise NfedgeError(f"{what}: {f} changed since the model was imported (sha256 differs); import it again")
        path = class_file(source["class"].rpartition(":")[0])
        if source.get("folder_files") and path is not None:
            check_folder_files(path.parent, source["folder_files"], what)
        return construct(cls, source["kwargs"])
    raise NfedgeError(f"{what}: unknown model source {kind!r}")


def first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__
