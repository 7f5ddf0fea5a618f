"""Gin parsing that imports only the project's own modules (and gin's).

A gin file, or a `--gin_param` binding, may hold `import <module>` (or `from <module>
import <name>`) lines, and gin imports them while it parses, running the module's
top-level code. `parse_config_files_and_bindings` is gin's function of that name, except
that every such line, in the files, in the files they `include` (at any depth) and in the
bindings, must name a module of `ALLOWED_PACKAGES` (`nst`, `nst.*`, `gin`, `gin.*`); any
other is refused with an error naming the file (or `--gin_param`) and line, before gin
parses or imports anything. `from __gin__ import ...` (gin's own switches, such as
dynamic_registration) imports nothing and stays allowed.

The statements are found with gin's own parser (`gin.config_parser.ConfigParser`), and
included files with gin's own search path and file readers, so the check reads what gin
will read.
"""

import contextlib
import os
from typing import Optional, Sequence

import gin
from gin import config_parser
from gin import resource_reader

ALLOWED_PACKAGES = ("nst", "gin")
# `from __gin__ import dynamic_registration` switches a gin feature on; gin imports no
# module for it.
_GIN_FEATURES = "__gin__"
GIN_PARAM = "--gin_param"


class GinImportError(ValueError):
    """A gin import (or include) outside `ALLOWED_PACKAGES`."""


def allowed_module(name: str) -> bool:
    """Whether gin may import the module `name` (a dotted name)."""
    return name.split(".")[0] in ALLOWED_PACKAGES


class _Delegate(config_parser.ParserDelegate):
    """Lets the parser read references and macros without resolving them: only the
    statements matter here, and resolving happens in gin's own pass."""

    def configurable_reference(self, scoped_configurable_name, evaluate):
        return None

    def macro(self, macro_name):
        return None


def _where(location, via: Sequence[str] = ()) -> str:
    """'<file> line <n>', and the include lines that led there."""
    name = location.filename or GIN_PARAM
    text = f"{name} line {location.line_num}"
    return text + "".join(f" (included from {line})" for line in reversed(via))


def _check_import(statement: config_parser.ImportStatement, via: Sequence[str]):
    if statement.is_from and statement.module.split(".")[0] == _GIN_FEATURES:
        return
    if not allowed_module(statement.module):
        line = statement.location.line_content.strip()
        raise GinImportError(
            f"{_where(statement.location, via)}: {line!r} is refused: gin files and "
            f"{GIN_PARAM} may import only the project's modules (nst, nst.*) and gin's "
            f"(gin.*), not {statement.module!r}.")


def _guarded_exists(exists):
    """gin's package-resource lookup (`resource_reader`) imports the parent package of a
    path such as 'pkg/sub/x.gin' to find it, running that package's code; it may look
    only inside the allowed packages."""

    def guarded(path: str) -> bool:
        package = os.path.dirname(path).replace("/", ".")
        return bool(package) and allowed_module(package) and exists(path)

    return guarded


@contextlib.contextmanager
def _no_foreign_package_lookups():
    readers = gin.config._FILE_READERS
    saved = list(readers)
    readers[:] = [(reader, _guarded_exists(exists)
                   if exists is resource_reader.system_path_file_exists else exists)
                  for reader, exists in saved]
    try:
        yield
    finally:
        readers[:] = saved


def _open(config_file: str):
    """The opened file `gin.parse_config_file(config_file)` would read (the same search
    path and readers, in the same order), or None if gin would find none."""
    prefixes = gin.config._LOCATION_PREFIXES if not os.path.isabs(config_file) else [""]
    for prefix in prefixes:
        path = os.path.join(prefix, config_file)
        for reader, exists in gin.config._FILE_READERS:
            if exists(path):
                return reader(path), path
    return None, None


def _check_text(text_or_file, includes: Sequence[str], via: Sequence[str]):
    """Checks the statements of one file (or the bindings); `includes` are the real paths
    of the files that included it, `via` their include lines."""
    for statement in config_parser.ConfigParser(text_or_file, _Delegate()):
        if isinstance(statement, config_parser.ImportStatement):
            _check_import(statement, via)
        elif isinstance(statement, config_parser.IncludeStatement):
            _check_file(statement.filename, includes,
                        list(via) + [_where(statement.location)], statement.location)


def _check_file(config_file: str, includes: Sequence[str] = (), via: Sequence[str] = (),
                location=None):
    opened, path = _open(config_file)
    if opened is None:
        return  # gin's own pass raises its "Unable to open file" error
    key = os.path.realpath(path)
    if key in includes:
        cycle = " -> ".join(list(includes[includes.index(key):]) + [key])
        raise ValueError(f"{_where(location, via[:-1])}: include {config_file!r} includes "
                         f"itself ({cycle}).")
    with opened as f:
        _check_text(f, list(includes) + [key], via)


def _check_all(config_files, bindings):
    for config_file in config_files or ():
        _check_file(config_file)
    _check_text("\n".join(bindings or ()), (), ())


def check_imports(config_files: Sequence[str], bindings: Optional[Sequence[str]] = ()):
    """Raises GinImportError for the first import outside `ALLOWED_PACKAGES` in
    `config_files` (and what they include) or `bindings`; imports nothing."""
    with _no_foreign_package_lookups():
        _check_all(config_files, bindings)


def parse_config_files_and_bindings(config_files: Sequence[str],
                                    bindings: Optional[Sequence[str]]):
    """`gin.parse_config_files_and_bindings`, after `check_imports`.

    Raises:
      GinImportError: an import outside `ALLOWED_PACKAGES` (nothing parsed or imported).
      ValueError, SyntaxError, ...: what gin raises for a bad file or binding.
    """
    with _no_foreign_package_lookups():
        _check_all(config_files, bindings)
        gin.parse_config_files_and_bindings(list(config_files or ()), list(bindings or ()))
