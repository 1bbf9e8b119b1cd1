"""The ``clipforget`` command. ``main(argv)`` takes a list so tests call the real CLI.

Each sub-command parses its flags and calls one function of :mod:`clipforget.app.api`; nothing else.
Listing methods, scenarios and configs imports no model code, so it answers at once.
Exit codes: 0 done; 2 bad input, reported as one line naming the problem and the fix; 3 a
questionable result under ``forget --strict``. An unanticipated error shows its traceback, after a
line with the version and the run directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from clipforget import __version__
from clipforget.app.cli_flags import (
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_QUESTIONABLE,
    build_parser,
)
from clipforget.config import ConfigError

log = logging.getLogger("clipforget")



def _audit_setting(args: argparse.Namespace):
    return False if args.no_audit else (args.audit_config or True)


def _streaming_of(args: argparse.Namespace):
    from clipforget.data import Streaming

    given = {"above_mib": args.stream_above, "workers": args.workers}
    return Streaming(**{k: v for k, v in given.items() if v is not None})


def configure_logging(verbose: bool = False) -> list[logging.Logger]:
    """INFO lines of the ``clipforget`` logger to stderr, and only warnings of other libraries.

    Other libraries' warnings go through one root handler, which is also what stops a library's
    root-level ``logging.info`` (open_clip's) from installing ``basicConfig``'s INFO handler. Replaces
    what an earlier call set up; returns the loggers given a handler.
    """
    logger, root = logging.getLogger("clipforget"), logging.getLogger()
    for lg in (logger, root):
        for h in [h for h in lg.handlers if getattr(h, "clipforget_cli", False)]:
            lg.removeHandler(h)
    ours = logging.StreamHandler(sys.stderr)
    ours.setFormatter(_Formatter(verbose))
    others = logging.StreamHandler(sys.stderr)
    others.setLevel(logging.WARNING)
    others.setFormatter(_Formatter(True))
    others.addFilter(lambda record: not record.name.startswith("clipforget"))  # those have their own handler
    for lg, h in ((logger, ours), (root, others)):
        h.clipforget_cli = True  # type: ignore[attr-defined]
        lg.addHandler(h)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    return [logger, root]


class _Formatter(logging.Formatter):
    """``HH:MM:SS message``; warnings and errors name their level, debug lines their logger."""

    def __init__(self, verbose: bool):
        from clipforget import parallel

        super().__init__(datefmt="%H:%M:%S")
        self.verbose = verbose
        self.launched = parallel.launched()
        self.rank = int(os.environ.get("RANK", "0"))  # the launcher's; read without starting the processes' group

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        where = f"[{record.name}] " if self.verbose else ""
        if self.launched > 1:
            where = f"[process {self.rank}] {where}"
        return f"{self.formatTime(record, self.datefmt)} {where}{level}{record.getMessage()}" + (
            "\n" + self.formatException(record.exc_info) if record.exc_info else "")


def _print_config(name: str) -> None:
    if name == "audit":
        from clipforget.audit import AuditConfig

        print("# the audit's default config; pass an edited copy with --audit-config (forget, bench) or --config (audit)")
        print(AuditConfig().to_yaml(), end="")
        return
    from clipforget.methods import get_method

    print(f"# method {name!r}: its full default config; edit and pass back with --config FILE")
    print(get_method(name).config_class().to_yaml(), end="")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``clipforget`` command; its exit status. A reader that closes the pipe early (``| head``)
    ends the command quietly, as other Unix tools do."""
    try:
        return _main(argv)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit flush must not raise again
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command in ("scenarios", "methods"):
        from clipforget.app import catalog

        print("\n".join(catalog.scenario_lines() if args.command == "scenarios" else catalog.method_lines()), flush=True)
        return 0
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # Hugging Face's bar per checkpoint load is noise here
    loggers = configure_logging(getattr(args, "verbose", False))
    from clipforget import parallel

    parallel.start()  # under a launch: join it before any model is placed
    if not parallel.is_main():
        sys.stdout = open(os.devnull, "w")  # one process prints the results; every one logs, named
    from tqdm.contrib.logging import logging_redirect_tqdm

    from clipforget.data.sources import ImageLoadError
    from clipforget.methods.training import NonFiniteLossError

    with logging_redirect_tqdm(loggers=loggers):  # log lines print above the bars, not through them
        try:
            return _run(args)
        except (ConfigError, FileNotFoundError, ValueError, ImageLoadError, NonFiniteLossError) as e:
            log.error("%s", e)
            return EXIT_BAD_INPUT
        except Exception:
            out = getattr(args, "out", None)
            log.critical("clipforget %s failed unexpectedly%s; the traceback follows (please report it)", __version__,
                         f" (run directory {out})" if out else "")
            raise


def _run(args: argparse.Namespace) -> int:
    if args.command == "config":
        _print_config(args.name)
        return 0
    if getattr(args, "device", None) is not None:
        from clipforget.models import check_device

        check_device(args.device)
    return _COMMANDS[args.command](args)


def _eval(args: argparse.Namespace) -> int:
    from clipforget.app import api

    if args.out:
        from clipforget.app.rundir import check_output_file

        check_output_file(args.out)
    metrics = api.evaluate(args.model, args.scenario, device=args.device, batch_size=args.batch_size,
                           streaming=_streaming_of(args))
    print(api.format_metrics(metrics))
    if args.out:
        from clipforget.io import atomic_write_text

        atomic_write_text(args.out, json.dumps(metrics.to_dict(), indent=2) + "\n")
    return 0


def _forget(args: argparse.Namespace) -> int:
    from clipforget.app import api

    together = len(args.scenario) > 1
    result = (api.forget_together if together else api.forget)(
        args.model, args.scenario if together else args.scenario[0], out=args.out,
        method=args.method, config=args.config, overrides=args.overrides, seed=args.seed, device=args.device,
        batch_size=args.batch_size, image_prefix=args.image_prefix, audit=_audit_setting(args),
        restart=args.restart, precision=args.precision, streaming=_streaming_of(args),
    )
    if together:
        if not result:  # another process of a launch: the main one ran the solve
            return 0
        for name, r in zip(args.scenario, result):
            print(f"{name}: Target {r.original_metrics.target:.1f} -> "
                  f"{r.unlearned_metrics.target:.1f}, Score {r.score:.1f}")
        print(f"metrics: {args.out}/metrics.json; model: {args.out}/model")
        result = result[0]
    else:
        print(f"report: {result.run_dir / 'report.html'}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    return EXIT_QUESTIONABLE if result.warnings and args.strict else 0


def _bench(args: argparse.Namespace) -> int:
    from clipforget.app import api

    table = api.bench(
        args.model, args.scenarios, methods=args.methods, seeds=args.seeds, out=args.out,
        device=args.device, batch_size=args.batch_size, image_prefix=args.image_prefix,
        audit=_audit_setting(args), save_models=args.save_models, restart=args.restart, precision=args.precision,
        streaming=_streaming_of(args),
    )
    print(table)
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from clipforget.app import api

    result = api.audit(
        args.model, args.original, args.scenario, out=args.out, seed=args.seed, config=args.config or True,
        device=args.device, batch_size=args.batch_size, image_prefix=args.image_prefix, precision=args.precision,
        streaming=_streaming_of(args),
    )
    print(api.format_audit(result))
    print(f"audit: {Path(args.out) / 'audit.md'}")
    return 0


def _mine(args: argparse.Namespace) -> int:
    from clipforget.app import api

    result = api.mine(args.model, args.pool, args.query, args.label, out=args.out, aliases=args.alias,
                      classnames=args.classnames, templates=args.templates, truth=args.truth,
                      config=_mine_config(args.config, args.forget_rule, args.forget_count), seed=args.seed,
                      device=args.device, batch_size=args.batch_size)
    print(api.format_mining(result.summary))
    print(f"scenario: {result.scenario}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from clipforget.app import api

    result = api.demo(out=args.out, device=args.device, batch_size=args.batch_size)
    print(f"report: {result.run_dir / 'report.html'}")
    return 0


_COMMANDS = {"eval": _eval, "forget": _forget, "bench": _bench, "audit": _audit, "mine": _mine, "demo": _demo}
"""The sub-commands after ``config`` (which needs no device), each ``(args) -> exit code``."""


def _mine_config(path: str | None, forget_rule: str | None, forget_count: int | None):
    """The mining config of ``--config`` (or the defaults) with ``--forget-rule`` and ``--forget-count`` applied."""
    overrides = [*([f"forget_rule={forget_rule}"] if forget_rule else []),
                 *([f"forget_count={forget_count}"] if forget_count is not None else [])]
    if not overrides:
        return path
    from clipforget.mining import MineConfig

    base = MineConfig.from_yaml(path) if path else MineConfig()
    return base.with_overrides(overrides)


if __name__ == "__main__":
    sys.exit(main())
