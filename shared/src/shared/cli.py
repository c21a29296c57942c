"""The wrapper around every package's ``train`` and ``reproduce`` entry points.

A known user error (a :class:`~shared.errors.UserError`: dataset missing or malformed, checkpoint corrupt
or from another model, unknown registry name, invalid value) and Hydra's own config errors (an unknown
config-group option such as ``model=fpm``, an override of a key that does not exist) print one line::

    error: <what>; <how to fix>

on stderr and exit with status 2, with no traceback. ``REPRO_DEBUG=1`` re-raises them with the full
traceback. Any other exception is a bug and keeps its traceback.

A training entry point uses :func:`hydra_main` in place of ``@hydra.main`` (it catches user errors both
inside the task, before Hydra adds its own report, and in Hydra's config composition)::

    @hydra_main(config_name="train")
    def main(cfg): fit(cfg, hydra_run_dir())

and a reproduce/benchmark ``main(argv=None)`` is decorated with :func:`entry`.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from typing import Any, Callable

from shared.errors import UserError

__all__ = ["entry", "hydra_main", "one_line"]


def _hydra_user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = []
    try:
        from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

        errors += [ConfigCompositionException, MissingConfigException, OverrideParseException]
    except ImportError:  # pragma: no cover - hydra is a dependency of shared
        pass
    try:
        from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

        errors += [ConfigAttributeError, ConfigKeyError, ValidationError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as a single line (Hydra's multi-line listings joined, worker tracebacks cut)."""
    msg = str(exc).strip()
    if "Original Traceback" in msg:  # re-raised from a DataLoader worker: keep the original message
        last = [ln for ln in msg.splitlines() if ln.strip()][-1].strip()
        msg = re.sub(r"^[\w.]+(Error|Exception): ", "", last)
    msg = msg.split("\nConfig search path")[0]  # Hydra appends its search path to MissingConfigException
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and lines[1].endswith(":"):  # "Could not find 'model/x'" / "Available options in 'model':"
        head, label, items = lines[0], lines[1][:-1], lines[2:]
        text = f"{head}; {label[0].lower() + label[1:]}: {', '.join(items)}"
    else:
        text = "; ".join(ln.rstrip(".") for ln in lines)
    if isinstance(exc, _hydra_user_errors()) and not isinstance(exc, UserError) and ";" not in text:
        text += "; check the spelling of the override (`--help` lists the config groups, `--cfg job` prints the config)"
    return text


def _debug() -> bool:
    return os.environ.get("REPRO_DEBUG", "") not in ("", "0", "false", "False")


def _report(exc: BaseException) -> None:
    sys.stdout.flush()
    print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None


def entry(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a console-script ``main``: user errors become one stderr line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = os.environ.get("HYDRA_FULL_ERROR")
        os.environ["HYDRA_FULL_ERROR"] = "1"  # let Hydra raise instead of printing its own report and exiting 1
        try:
            return fn(*args, **kwargs)
        except (UserError, *_hydra_user_errors()) as exc:
            if _debug():
                raise
            _report(exc)
        finally:
            if previous is None:
                os.environ.pop("HYDRA_FULL_ERROR", None)
            else:
                os.environ["HYDRA_FULL_ERROR"] = previous

    return wrapper


def hydra_main(config_name: str = "train", config_path: str = "conf") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``@hydra.main(version_base="1.3", ...)`` with user errors reported as one line (exit status 2).

    The task is guarded inside Hydra (a user error raised by ``fit()`` exits before Hydra prints its own
    "Error executing job" report) and outside it (Hydra's config-composition errors).

    Under torchrun the process group the task started is destroyed when the task ends, after a barrier
    when it ended normally: left to interpreter shutdown, gloo's worker threads can be torn down in any
    order and abort a rank that has finished its work ("terminate called without an active exception")."""
    import hydra

    from shared.runtime.dist import cleanup_distributed

    def decorate(task: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(task)
        def guarded(cfg: Any) -> Any:
            done = False
            try:
                out = task(cfg)
                done = True
                return out
            except UserError as exc:
                if _debug():
                    raise
                _report(exc)
            finally:
                cleanup_distributed(barrier=done)  # no barrier after an error: the other ranks may be gone

        return entry(hydra.main(version_base="1.3", config_path=config_path, config_name=config_name)(guarded))

    return decorate
