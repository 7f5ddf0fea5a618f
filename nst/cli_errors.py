"""One-line errors for every binary: `error: <message>` on stderr, a non-zero exit, no
traceback (issue 14, item 3).

Every console script and tool starts through `run(main)` instead of `absl.app.run(main)`,
so that there is one place deciding what a user error is:

  * the project's own error types (a bad setting, a refused gin import, a non-finite
    model or loss, a checkpoint of another model, a bad record) and the usual data and
    user errors (missing files, ValueErrors of our checks, TensorFlow's NotFound /
    InvalidArgument / DataLoss / FailedPrecondition / PermissionDenied, app.UsageError,
    bad flag values) print one line and exit 1 (a usage error: absl's exit code);
  * anything else (AssertionError, TypeError, KeyError, ...) is a bug and keeps its
    traceback;
  * `--traceback` shows the traceback of a user error too, for debugging.

A bad record asserted inside tf.data reaches Python as TensorFlow's "Error in
user-defined function passed to MapDataset ... assertion failed: [...]" text;
`nst.data.readers.RecordError.from_op_error` recovers file, record index and reason from
the assertion's structured fields, and the line says only those.
"""

import sys
import traceback as traceback_lib
from typing import Callable, Optional

from absl import app, flags, logging

FLAGS = flags.FLAGS

# FloatingPointError: NonFiniteLossError and NonFiniteModelError (nst.train) derive from it.
# ValueError: SettingError, GinImportError, CheckpointMismatchError, RecordError and the
# argument checks of the project. OSError: FileNotFoundError, PermissionError, ...
USER_ERRORS = (app.UsageError, ValueError, OSError, FloatingPointError, flags.Error,
               KeyboardInterrupt)


def _tf_errors():
    """TensorFlow's data and file errors, if TensorFlow is loaded (a binary that never
    imported it, e.g. nst-model-table without --build, cannot have raised one)."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return ()
    return (tf.errors.NotFoundError, tf.errors.InvalidArgumentError, tf.errors.DataLossError,
            tf.errors.FailedPreconditionError, tf.errors.PermissionDeniedError,
            tf.errors.OutOfRangeError)


def is_user_error(error: BaseException) -> bool:
    return isinstance(error, USER_ERRORS + _tf_errors())


def define_flags(flag_values=FLAGS):
    """--traceback, unless the binary already has it."""
    if "traceback" not in flag_values:
        flags.DEFINE_bool("traceback", False, "Show the full traceback of an error (a "
                          "user error otherwise prints one 'error:' line).",
                          flag_values=flag_values)


def message(error: BaseException) -> str:
    """The one line for `error`: its own message, a bad record's file/index/reason, or a
    TensorFlow error's message without the op and function names around it."""
    op_error = _tf_errors() and isinstance(error, sys.modules["tensorflow"].errors.OpError)
    if op_error:
        from nst.data import readers  # deferred: TensorFlow is loaded anyway

        record = readers.RecordError.from_op_error(error)
        if record is not None:
            error, op_error = record, False
    if isinstance(error, KeyboardInterrupt):
        return "interrupted; rerun the same command to continue where it stopped"
    text = _strip_tf_context(error.message) if op_error else str(error)
    if not text and isinstance(error, OSError) and error.filename:
        text = f"{error.strerror or type(error).__name__}: {error.filename}"
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text or type(error).__name__


def _strip_tf_context(text: str) -> str:
    """TensorFlow prefixes the message with {{function_node ...}} and '... transformation
    with iterator: Iterator::Root::...: ' and appends '[[{{node ...}}]] [Op:...]'."""
    import re

    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"^.*?transformation with iterator: [\w:]+: ", "", text, flags=re.S)
    text = re.sub(r"\s*\[\[.*$", "", text, flags=re.S)
    text = re.sub(r"\s*\[Op:\w+\].*$", "", text, flags=re.S)
    return text.strip()


def report(error: BaseException) -> int:
    """Prints the error line (and with --traceback the traceback); returns the exit code."""
    show = "traceback" in FLAGS and FLAGS["traceback"].value
    if show:
        traceback_lib.print_exception(type(error), error, error.__traceback__,
                                      file=sys.stderr)
    sys.stderr.write(f"error: {message(error)}\n")
    sys.stderr.flush()
    if isinstance(error, app.UsageError):
        return error.exitcode or 1
    return 130 if isinstance(error, KeyboardInterrupt) else 1


def guarded(main: Callable) -> Callable:
    """`main` with user errors turned into one line and an exit code (module doc)."""

    def wrapped(argv):
        try:
            return main(argv)
        except BaseException as e:  # noqa: B036  (sorted below; bugs are re-raised)
            if isinstance(e, SystemExit) or not is_user_error(e):
                raise
            sys.exit(report(e))

    return wrapped


def parser(flags_parser: Optional[Callable] = None) -> Callable:
    """app.run's flags_parser, with a bad or unknown flag reported as one 'error:' line
    (absl's own parser prints 'FATAL Flags parsing error' and usage text)."""

    def parse(argv):
        try:
            return flags_parser(argv) if flags_parser else FLAGS(argv)
        except flags.Error as e:
            sys.stderr.write(f"error: {e} (--helpshort lists the flags)\n")
            sys.exit(1)

    return parse


def run(main: Callable, flags_parser: Optional[Callable] = None):
    """absl.app.run(main) for every binary of the project: --traceback, one-line errors."""
    define_flags()
    logging.use_absl_handler()
    app.run(guarded(main), flags_parser=parser(flags_parser))
