"""The ``clipforget`` command. ``main(argv)`` takes a list so tests call the real CLI.

Each sub-command parses its flags and calls one function of :mod:`clipforget.api`; nothing else.
Exit codes: 0 done; 2 bad input, reported as one line naming the problem and the fix; 3 a
questionable result under ``forget --strict``. An unanticipated error shows its traceback, after a
line with the version and the run directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from clipforget.config import ConfigError

log = logging.getLogger("clipforget")

EXIT_BAD_INPUT = 2
EXIT_QUESTIONABLE = 3


def _prefix(value: str) -> str | None:
    return None if value.lower() == "none" else value


def _train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-prefix", type=_prefix, default="auto",
                   help="first image stage methods may change; earlier stages run once per image "
                        "(default: auto = the backend's choice; none = whole images)")


def _audit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-audit", action="store_true", help="skip the forgetting audit (audit.json) of each run")
    p.add_argument("--audit-config", help="audit config YAML (default: the audit's defaults)")


def _audit_setting(args: argparse.Namespace):
    return False if args.no_audit else (args.audit_config or True)


def _restart(p: argparse.ArgumentParser) -> None:
    p.add_argument("--restart", action="store_true",
                   help="discard what an earlier, different run left in --out (its finished stages) and start again")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size (default: 64)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipforget", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="zero-shot Target / Retain / held-out accuracy of a model on a scenario")
    p.add_argument("--model", required=True, help="model id: openclip:RN50@openai, hf:/dir, testbed, ...")
    p.add_argument("--scenario", required=True, help="scenario YAML file or bundled scenario name")
    p.add_argument("--out", help="write the metrics as JSON to this file")
    _common(p)

    p = sub.add_parser("forget", help="make a model forget a scenario's subgroup; writes a run directory")
    p.add_argument("--model", required=True)
    p.add_argument("--scenario", required=True)
    p.add_argument("--out", required=True, help="run directory (resumed if it holds a killed run)")
    _restart(p)
    p.add_argument("--strict", action="store_true",
                   help=f"exit with code {EXIT_QUESTIONABLE} when the result is questionable (e.g. it is the original model)")
    p.add_argument("--method", default="ours", help="registered method name (default: ours)")
    p.add_argument("--config", help="method config YAML (default: the method's defaults)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. forget.delta=-0.3 select.top_k=16")
    _train(p)
    _audit(p)
    _common(p)

    p = sub.add_parser("bench", help="every method on every scenario and seed, resumable; CSV/JSON/Markdown")
    p.add_argument("--model", default="testbed")
    p.add_argument("--scenarios", nargs="+", required=True)
    p.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--out", required=True)
    _restart(p)
    _train(p)
    _audit(p)
    _common(p)

    p = sub.add_parser("audit", help="can the forgotten subgroup still be found? an unlearned model against its original")
    p.add_argument("--model", required=True, help="the unlearned model id (e.g. testbed@runs/x/model)")
    p.add_argument("--original", required=True, help="the model it was unlearned from")
    p.add_argument("--scenario", required=True)
    p.add_argument("--out", required=True, help="directory for audit.json and audit.md")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", help="audit config YAML (default: the audit's defaults)")
    _train(p)
    _common(p)

    p = sub.add_parser("demo", help="the built-in default: forget on the testbed model, with report")
    p.add_argument("--out", default="runs/demo")
    _common(p)

    sub.add_parser("scenarios", help="list the bundled scenarios")
    sub.add_parser("methods", help="list the registered methods")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from clipforget import __version__, api
    from clipforget.data.sources import ImageLoadError
    from clipforget.methods.training import NonFiniteLossError

    try:
        return _run(args, api)
    except (ConfigError, FileNotFoundError, ValueError, ImageLoadError, NonFiniteLossError) as e:
        log.error("%s", e)
        return EXIT_BAD_INPUT
    except Exception:
        out = getattr(args, "out", None)
        log.critical("clipforget %s failed unexpectedly%s; the traceback follows (please report it)", __version__,
                     f" (run directory {out})" if out else "")
        raise


def _run(args: argparse.Namespace, api) -> int:
    if getattr(args, "device", None) is not None:
        from clipforget.models import check_device

        check_device(args.device)
    if args.command == "eval":
        if args.out:
            from clipforget.rundir import check_output_file

            check_output_file(args.out)
        metrics = api.evaluate(args.model, args.scenario, device=args.device, batch_size=args.batch_size)
        text = json.dumps(metrics.to_dict(), indent=2)
        print(api.format_metrics(metrics))
        if args.out:
            from clipforget.io import atomic_write_text

            atomic_write_text(args.out, text + "\n")
    elif args.command == "forget":
        result = api.forget(
            args.model, args.scenario, out=args.out, method=args.method, config=args.config,
            overrides=args.overrides, seed=args.seed, device=args.device, batch_size=args.batch_size,
            image_prefix=args.image_prefix, audit=_audit_setting(args), restart=args.restart,
        )
        print(f"report: {result.run_dir / 'report.md'}")
        for warning in result.warnings:
            print(f"warning: {warning}")
        if result.warnings and args.strict:
            return EXIT_QUESTIONABLE
    elif args.command == "bench":
        table = api.bench(
            args.model, args.scenarios, methods=args.methods, seeds=args.seeds, out=args.out,
            device=args.device, batch_size=args.batch_size, image_prefix=args.image_prefix,
            audit=_audit_setting(args), restart=args.restart,
        )
        print(table)
    elif args.command == "audit":
        result = api.audit(
            args.model, args.original, args.scenario, out=args.out, seed=args.seed, config=args.config or True,
            device=args.device, batch_size=args.batch_size, image_prefix=args.image_prefix,
        )
        print(api.format_audit(result))
        print(f"audit: {Path(args.out) / 'audit.md'}")
    elif args.command == "demo":
        result = api.demo(out=args.out, device=args.device, batch_size=args.batch_size)
        print(f"report: {result.run_dir / 'report.md'}")
    elif args.command == "scenarios":
        print("\n".join(api.list_scenarios()))
    elif args.command == "methods":
        print("\n".join(api.list_methods()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
