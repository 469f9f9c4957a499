"""Command-line plumbing shared by the experiments: one line per user error.

Every CLI of `experiments` runs through `run`:

* a flag that does not parse (``--k abc``, an unknown ``--flag``, an unknown
  ``--config.x``) prints one line naming it and exits with `USAGE_EXIT` (absl alone
  would print the usage text or a traceback);
* positional arguments are rejected unless the CLI takes them;
* an `app.UsageError` raised by ``main`` prints one line (absl would print the
  whole help first); `blame` and `flag_error` turn the library's ``ValueError`` of
  a user's input into such an error naming the flag;
* an output folder that another run is writing (`cfmod_jax.fileio.OutputLockedError`)
  or that holds a different run's outputs (`cfmod_jax.analysis.OutputFolderError`)
  prints one line;
* Ctrl-C prints one line (`set_interrupt_message`, e.g. where finished work is
  kept) and exits with `INTERRUPT_EXIT`, instead of a traceback — also while the
  CLI is still importing, if it imports this module before anything heavy.

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import NoReturn

from absl import app, flags

__all__ = [
  "INTERRUPT_EXIT",
  "USAGE_EXIT",
  "blame",
  "check_input_file",
  "check_output_dir",
  "define_config_file",
  "fail",
  "flag_error",
  "flag_value",
  "name_config_field",
  "name_flag",
  "one_line",
  "parse_flags",
  "prog",
  "run",
  "set_interrupt_message",
]

FLAGS = flags.FLAGS
USAGE_EXIT = 2
INTERRUPT_EXIT = 130
_interrupt_message = ["interrupted"]
_HELP = ("-h", "-?", "--help", "--helpshort", "--helpfull", "--helpxml")


def _interrupted_while_starting(signum, frame):  # pylint: disable=unused-argument
  sys.stderr.write(f"{prog()}: interrupted while starting; nothing was done\n")
  sys.stderr.flush()
  os._exit(INTERRUPT_EXIT)  # pylint: disable=protected-access


def _running_a_cli() -> bool:
  """Whether the program is ``python -m experiments.<name>`` or ``studies.<name>``
  (not, e.g., pytest)."""
  main = sys.argv[0] if sys.argv else ""
  here = os.path.dirname(os.path.abspath(__file__))
  programs = (here, os.path.join(os.path.dirname(here), "studies"))
  return bool(main) and os.path.dirname(os.path.abspath(main)) in programs


# Ctrl-C while the CLI imports jax etc. or parses its flags: one line, not a
# traceback (a CLI imports this module first). `run` restores KeyboardInterrupt
# before calling main.
if _running_a_cli() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
  signal.signal(signal.SIGINT, _interrupted_while_starting)


def prog() -> str:
  """``experiments.<name>`` of the running CLI."""
  name = os.path.splitext(os.path.basename(sys.argv[0] if sys.argv else ""))[0]
  return f"experiments.{name}" if name and name != "__main__" else "experiments"


def one_line(message: object) -> str:
  return " ".join(str(message).split())


def fail(message: object) -> NoReturn:
  """Prints ``<prog>: error: <message>`` on one line and exits with `USAGE_EXIT`."""
  sys.stdout.flush()
  sys.stderr.write(f"{prog()}: error: {one_line(message)}\n")
  sys.stderr.flush()
  sys.exit(USAGE_EXIT)


def set_interrupt_message(message: str) -> None:
  """What Ctrl-C prints from now on (one line)."""
  _interrupt_message[0] = one_line(message)


def _config_override_error(argv: Iterable[str], exc: Exception) -> str | None:
  """One line for an ``--config.<field>`` override that ml_collections rejected
  with a non-flags exception (an unknown field raises AttributeError)."""
  for arg in argv:
    m = re.match(r"--(config(?:\.[\w]+)+)(?:=|$)", arg)
    if m and isinstance(exc, (AttributeError, KeyError)):
      field = str(exc).strip("'\" ")
      if m.group(1).endswith("." + field) or f".{field}." in m.group(1) + ".":
        return f"--{m.group(1)}: the config has no field {field!r}"
  for arg in argv:
    if arg.startswith("--config."):
      return f"{arg.split('=')[0]}: {type(exc).__name__}: {one_line(exc)}"
  return None


def define_config_file(name: str, default: str, help_text: str) -> object:
  """``config_flags.DEFINE_config_file`` (locked) with a default config file.

  With a default, ml_collections reads the ``--<name>.<field>`` overrides of
  ``sys.argv`` when the flag is defined (the CLI's import), not in `parse_flags`: an
  override of a field the config does not have is one line here too.
  """
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  try:
    return config_flags.DEFINE_config_file(name, default, help_text, lock_config=True)
  except (AttributeError, KeyError, TypeError, ValueError) as exc:
    fail(_config_override_error(sys.argv[1:], exc) or f"--{name}: {one_line(exc)}")


def _config_field_hint(name: str) -> str:
  """For an unknown ``--name`` that is a field of a config flag's config (a setting
  that moved into ``--config.*``): ``; it is --config.name``, else ''."""
  for flag in FLAGS:
    config = FLAGS[flag].value
    if not (hasattr(config, "keys") and hasattr(config, "lock")):  # not a ConfigDict
      continue
    if name in config:
      return f"; the setting is --{flag}.{name}=<value>"
    if name.startswith("no") and isinstance(config.get(name[2:]), bool):
      return f"; the setting is --{flag}.{name[2:]}=false"
  return ""


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with one line (no usage text) per error."""
  try:
    return FLAGS(argv)
  except SystemExit as exc:  # absl's --help exits with 1 after printing the help
    if exc.code == 1 and any(a.split("=")[0] in _HELP for a in argv[1:]):
      sys.exit(0)
    raise
  except flags.UnrecognizedFlagError as exc:
    fail(f"{exc}{_config_field_hint(exc.flagname)}")
  except flags.Error as exc:
    fail(exc)
  except SyntaxError as exc:  # a config file (ml_collections config_flags) that does not parse
    fail(f"{exc.filename}:{exc.lineno}: {exc.msg} (a config file given by a flag)")
  except (AttributeError, KeyError, TypeError, ValueError) as exc:  # ml_collections overrides
    message = _config_override_error(argv[1:], exc)
    if message is None:
      raise
    fail(message)


def run(
  main: Callable[[list[str]], object],
  *,
  positional: bool = False,
  hard_exit_on_interrupt: bool = False,
) -> None:
  """`absl.app.run` with one-line user errors and Ctrl-C (see the module doc).

  Args:
    main: the CLI's main(argv).
    positional: whether the CLI takes positional arguments (argv[1:]); if not,
      any is a usage error.
    hard_exit_on_interrupt: after Ctrl-C, leave with ``os._exit`` (no interpreter
      shutdown), for CLIs whose library threads (orbax's async checkpointing)
      print tracebacks when the interpreter shuts down under them. Finished files
      are on disk already; an unfinished checkpoint stays a temporary folder that
      is ignored on resume.
  """

  def wrapped(argv):
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
      signal.signal(signal.SIGINT, signal.default_int_handler)
    if not positional and len(argv) > 1:
      fail(
        f"unexpected positional argument(s) {' '.join(argv[1:])!r}; flags are written "
        "--name=value (see --help)"
      )
    try:
      return main(argv)
    except app.UsageError as exc:
      fail(exc)
    except Exception as exc:  # pylint: disable=broad-except
      if isinstance(exc, _output_folder_errors()):
        fail(exc)
      raise
    except KeyboardInterrupt:
      sys.stdout.flush()
      sys.stderr.write(f"{prog()}: {_interrupt_message[0]}\n")
      sys.stderr.flush()
      if hard_exit_on_interrupt:
        os._exit(INTERRUPT_EXIT)  # pylint: disable=protected-access
      sys.exit(INTERRUPT_EXIT)

  app.run(wrapped, flags_parser=parse_flags)


def _output_folder_errors() -> tuple[type[BaseException], ...]:
  """Errors about the output folder that are the user's to fix (another run is
  writing it; it holds a different run's outputs): one line, no traceback."""
  found = []
  for module, name in (
    ("cfmod_jax.fileio", "OutputLockedError"),
    ("cfmod_jax.analysis", "OutputFolderError"),
  ):
    cls = getattr(sys.modules.get(module), name, None)
    if isinstance(cls, type):
      found.append(cls)
  return tuple(found)


def flag_value(name: str) -> str:
  value = FLAGS[name].value
  if isinstance(value, (list, tuple)):
    value = ",".join(map(str, value))
  return str(value)


def flag_error(name: str, exc: object) -> app.UsageError:
  """``--name=value: message`` as a UsageError."""
  return app.UsageError(f"--{name}={flag_value(name)}: {one_line(exc)}")


@contextlib.contextmanager
def blame(
  name: str, errors: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError)
) -> Iterator[None]:
  """Turns ``errors`` raised in the block into a UsageError naming ``--name``."""
  try:
    yield
  except errors as exc:
    raise flag_error(name, exc) from None


def _first_named(message: str, candidates: Mapping[str, str]) -> str | None:
  """The value of the key of ``candidates`` that occurs first as a word in ``message``."""
  best = None
  for word, name in candidates.items():
    m = re.search(rf"(?<![\w-]){re.escape(word)}(?!\w)", message)
    if m and (best is None or m.start() < best[0]):
      best = (m.start(), name)
  return None if best is None else best[1]


def name_flag(
  exc: object, names: Iterable[str], aliases: Mapping[str, str] | None = None
) -> app.UsageError:
  """A UsageError for a library ValueError whose message names a config field.

  The flag is the first of ``names`` (or of ``aliases``' keys, which map a
  field name to its flag) that occurs as a word in the message; without one the
  message is kept as is.
  """
  message = one_line(exc)
  flag = _first_named(message, {**{n: n for n in names}, **(aliases or {})})
  if flag is None:
    return app.UsageError(message)
  return app.UsageError(f"--{flag}={flag_value(flag)}: {message}")


def name_config_field(
  exc: object, config: Mapping[str, object], aliases: Mapping[str, str] | None = None
) -> app.UsageError:
  """`name_flag` for the fields of an ``--config`` (ml_collections) flag: the first
  field of ``config`` (or alias, mapping a word to a field) named in the message
  becomes ``--config.<field>=<value>: message``."""
  message = one_line(exc)
  field = _first_named(message, {**{n: n for n in config}, **(aliases or {})})
  if field is None:
    return app.UsageError(message)
  return app.UsageError(f"--config.{field}={config[field]}: {message}")


def check_output_dir(name: str) -> str:
  """Creates the folder of flag ``--name`` and checks that it is writable."""
  path = FLAGS[name].value
  if not path:
    raise app.UsageError(f"--{name} must not be empty")
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as exc:
    raise app.UsageError(
      f"--{name}={path}: not a usable output folder ({exc.strerror or one_line(exc)})"
    ) from None
  return path


def check_input_file(name: str) -> str:
  """The path of flag ``--name``, which must be a readable regular file."""
  path = FLAGS[name].value
  if not path or not os.path.isfile(path):
    raise app.UsageError(f"--{name}={path}: no such file")
  if not os.access(path, os.R_OK):
    raise app.UsageError(f"--{name}={path}: not readable")
  return path
