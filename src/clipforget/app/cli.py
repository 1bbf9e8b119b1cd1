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
from clipforget.config import ConfigError

log = logging.getLogger("clipforget")

EXIT_BAD_INPUT = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe
EXIT_QUESTIONABLE = 3

MODEL_IDS = """\
model ids (--model, --original): BACKEND:NAME[@WEIGHTS], or testbed[@DIR]
  openclip:RN50@openai                 open_clip architecture @ pretrained tag
  openclip:ViT-B-32@/ckpt.safetensors  open_clip architecture @ a checkpoint file
  openclip:local-dir:/runs/x/model     a folder written by clipforget or open_clip
  hf:openai/clip-vit-base-patch32      Hugging Face CLIP by hub id
  hf:/local/dir                        Hugging Face CLIP saved with save_pretrained
  testbed                              the offline testbed model (not CLIP; see docs/testbed.md)
  testbed@/runs/x/model                a testbed saved by clipforget
"""

EXAMPLES = """\
examples:
  clipforget demo
  clipforget scenarios
  clipforget forget --model testbed --scenario cifar10-cat --out runs/cat
  clipforget config ours > ours.yaml    # edit, then: clipforget forget ... --config ours.yaml
  clipforget forget --model openclip:RN50@openai --scenario my.yaml --out runs/x forget.delta=-0.3
  clipforget bench --scenarios cifar10-cat --methods ours ga "ours[use_lora=false]" --seeds 0 1 --out runs/b
  clipforget audit --model testbed@runs/cat/model --original testbed --scenario cifar10-cat --out runs/cat-audit
  clipforget forget --model testbed@runs/cat/model --scenario fmnist-sneaker --out runs/cat+sneaker   # a second request
  clipforget forget --model testbed --scenario cifar10-cat --scenario fmnist-sneaker --out runs/both   # both at once
  clipforget mine --model testbed --pool pool/ --query "photos of English springer spaniels" --label dog \
                  --alias "English springer" --classnames dog cat bird --out springer.yaml
"""


def _prefix(value: str) -> str | None:
    return None if value.lower() == "none" else value


def _train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-prefix", type=_prefix, default="auto",
                   help="first image stage methods may change; earlier stages run once per image "
                        "(default: auto = the backend's choice; none = whole images)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="forward passes in fp32 or mixed precision by autocast (weights stay fp32); "
                        "default auto: bf16 on a CUDA GPU that supports it, else fp32")


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


def _streaming(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stream-above", type=float, default=None, metavar="MIB",
                   help="a held-out set whose preprocessed images would take more than MIB MiB is read from disk "
                        "at every pass instead of kept in memory (default: 1024; 0 streams every held-out set)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers reading streamed sets (default: the CPU count less one, at most 8; "
                        "0 reads in the main process)")


def _streaming_of(args: argparse.Namespace):
    from clipforget.data import Streaming

    given = {"above_mib": args.stream_above, "workers": args.workers}
    return Streaming(**{k: v for k, v in given.items() if v is not None})


SCENARIO_HELP = "a scenario YAML file, or the name of a bundled one (see: clipforget scenarios)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipforget", description="Make a CLIP model forget one subgroup of images and keep everything else.",
                                     epilog=MODEL_IDS + "\n" + EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"clipforget {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, epilog: str = MODEL_IDS) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("eval", "zero-shot Target / Retain / held-out accuracy of a model on a scenario")
    p.add_argument("--model", required=True, help="the model id (grammar below)")
    p.add_argument("--scenario", required=True, help=SCENARIO_HELP)
    p.add_argument("--out", help="also write the metrics as JSON to this file")
    _streaming(p)
    _common(p)

    p = command("forget", "make a model forget a scenario's subgroup; writes a run directory with report.html")
    p.add_argument("--model", required=True, help="the model to unlearn from (grammar below)")
    p.add_argument("--scenario", required=True, action="append",
                   help=SCENARIO_HELP + "; given several times, one run forgets every scenario's subgroup at once "
                   "(method ours at its defaults)")
    p.add_argument("--out", required=True, help="run directory (resumed if it holds a killed run of the same config, "
                                                "scenario and model)")
    _restart(p)
    p.add_argument("--strict", action="store_true",
                   help=f"exit with code {EXIT_QUESTIONABLE} when the result is questionable (e.g. it is the original model)")
    p.add_argument("--method", default="ours", help="a registered method (see: clipforget methods; default: ours)")
    p.add_argument("--config", help="method config YAML (default: the method's defaults; see: clipforget config METHOD)")
    p.add_argument("--seed", type=int, default=0, help="the seed of every random choice (default: 0)")
    p.add_argument("overrides", nargs="*", metavar="FIELD=VALUE",
                   help="config overrides applied after --config, e.g. forget.delta=-0.3 select.top_k=16")
    _train(p)
    _audit(p)
    _streaming(p)
    _common(p)

    p = command("bench", "every method on every scenario and seed, resumable; CSV, JSON, Markdown and report.html")
    p.add_argument("--model", default="testbed", help="the model id (grammar below; default: testbed)")
    p.add_argument("--scenarios", nargs="+", required=True, metavar="SCENARIO", help=SCENARIO_HELP)
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help='registered methods, or variants as name[field=value,...] (default: every registered method)')
    p.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED", help="seeds (default: 0)")
    p.add_argument("--out", required=True, help="bench directory (resumed: finished cells are never redone)")
    _restart(p)
    p.add_argument("--save-models", choices=("none", "ours", "best", "all"), default="ours",
                   help="which cells keep their unlearned model folder: none; the cells of ours and its variants "
                        "(default); per scenario the best Score only; all")
    _train(p)
    _audit(p)
    _streaming(p)
    _common(p)

    p = command("audit", "can the forgotten subgroup still be found? an unlearned model against its original")
    p.add_argument("--model", required=True, help="the unlearned model id (e.g. testbed@runs/x/model)")
    p.add_argument("--original", required=True, help="the model it was unlearned from")
    p.add_argument("--scenario", required=True, help=SCENARIO_HELP)
    p.add_argument("--out", required=True, help="directory for audit.json and audit.md")
    p.add_argument("--seed", type=int, default=0, help="the seed of the audit's random choices (default: 0)")
    p.add_argument("--config", help="audit config YAML (default: the audit's defaults; see: clipforget config audit)")
    _train(p)
    _streaming(p)
    _common(p)

    p = command("mine", "build a scenario YAML from an unlabeled pool of images and a description of the subgroup")
    p.add_argument("--model", required=True, help="the original model, whose embeddings mine the pool (grammar below)")
    p.add_argument("--pool", required=True, help="a folder of images (any depth) or a CSV/JSONL manifest with a 'path' column")
    p.add_argument("--query", required=True, help='the subgroup in words, e.g. "photos of English springer spaniels"')
    p.add_argument("--label", required=True, help="the class of the label space the subgroup belongs to, e.g. dog")
    p.add_argument("--out", required=True, help="the scenario YAML to write (with <stem>.pool.csv and <stem>.mining.json)")
    p.add_argument("--alias", action="append", default=[], metavar="NAME",
                   help="another name of the subgroup (repeatable): searched as well, and audited")
    p.add_argument("--classnames", nargs="+", metavar="CLASS",
                   help="the label space (default: the pool's class labels, when it has them)")
    p.add_argument("--templates", nargs="+", metavar="TEMPLATE", help="prompt templates with {} (default: six photo templates)")
    p.add_argument("--truth", help="the pool's class or subgroup name of the true subgroup: report precision / recall")
    p.add_argument("--config", help="mining config YAML (fields: forget_count, retain_per_class, calibration_per_class, "
                                    "guard, test_fraction)")
    p.add_argument("--forget-rule", choices=("query", "label"),
                   help="query: mine the images nearest the query (default); label: the subgroup is its whole class, "
                        "take the images classified as the label")
    p.add_argument("--forget-count", type=int, metavar="N",
                   help="take the N images nearest the query as the forget set (overrides the config's forget_count; "
                        "default: every image whose nearest text is the query)")
    p.add_argument("--seed", type=int, default=0, help="the scenario's seed (default: 0)")
    _common(p)

    p = command("demo", "the built-in default: the method (ours) on the testbed model, with its report", epilog="")
    p.add_argument("--out", default="runs/demo", help="where the run directory goes (default: runs/demo)")
    _common(p)

    command("scenarios", "list the bundled scenarios: what each forgets, and the data it needs", epilog="")
    command("methods", "list the registered methods: what each does, and the data it uses", epilog="")
    p = command("config", "print a method's (or the audit's) full default config as YAML, ready for --config",
                epilog="example: clipforget config ours > ours.yaml; clipforget forget ... --config ours.yaml")
    p.add_argument("name", metavar="METHOD", help="a registered method, or 'audit' for the audit config")
    return parser


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
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
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
    from clipforget.app import api

    if args.command == "eval":
        if args.out:
            from clipforget.app.rundir import check_output_file

            check_output_file(args.out)
        metrics = api.evaluate(args.model, args.scenario, device=args.device, batch_size=args.batch_size,
                               streaming=_streaming_of(args))
        text = json.dumps(metrics.to_dict(), indent=2)
        print(api.format_metrics(metrics))
        if args.out:
            from clipforget.io import atomic_write_text

            atomic_write_text(args.out, text + "\n")
    elif args.command == "forget":
        run = api.forget if len(args.scenario) == 1 else api.forget_together
        result = run(
            args.model, args.scenario[0] if len(args.scenario) == 1 else args.scenario, out=args.out,
            method=args.method, config=args.config, overrides=args.overrides, seed=args.seed, device=args.device,
            batch_size=args.batch_size, image_prefix=args.image_prefix, audit=_audit_setting(args),
            restart=args.restart, precision=args.precision, streaming=_streaming_of(args),
        )
        if len(args.scenario) > 1:
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
        if result.warnings and args.strict:
            return EXIT_QUESTIONABLE
    elif args.command == "bench":
        table = api.bench(
            args.model, args.scenarios, methods=args.methods, seeds=args.seeds, out=args.out,
            device=args.device, batch_size=args.batch_size, image_prefix=args.image_prefix,
            audit=_audit_setting(args), save_models=args.save_models, restart=args.restart, precision=args.precision,
            streaming=_streaming_of(args),
        )
        print(table)
        print(f"report: {Path(args.out) / 'report.html'}")
    elif args.command == "audit":
        result = api.audit(
            args.model, args.original, args.scenario, out=args.out, seed=args.seed, config=args.config or True,
            device=args.device, batch_size=args.batch_size, image_prefix=args.image_prefix, precision=args.precision,
            streaming=_streaming_of(args),
        )
        print(api.format_audit(result))
        print(f"audit: {Path(args.out) / 'audit.md'}")
    elif args.command == "mine":
        result = api.mine(args.model, args.pool, args.query, args.label, out=args.out, aliases=args.alias,
                          classnames=args.classnames, templates=args.templates, truth=args.truth,
                          config=_mine_config(args.config, args.forget_rule, args.forget_count), seed=args.seed, device=args.device,
                          batch_size=args.batch_size)
        print(api.format_mining(result.summary))
        print(f"scenario: {result.scenario}")
    elif args.command == "demo":
        result = api.demo(out=args.out, device=args.device, batch_size=args.batch_size)
        print(f"report: {result.run_dir / 'report.html'}")
    return 0


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
