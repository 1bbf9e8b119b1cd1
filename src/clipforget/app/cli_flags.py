"""The ``clipforget`` command's flags: one sub-command per job, each with its help and examples.

Declarations only: :mod:`clipforget.app.cli` turns the parsed flags into calls of :mod:`clipforget.app.api`."""

from __future__ import annotations

import argparse

from clipforget import __version__

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


def _restart(p: argparse.ArgumentParser) -> None:
    p.add_argument("--restart", action="store_true",
                   help="discard what an earlier, different run left in --out (its finished stages) and start again")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size (default: 64)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _streaming(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stream-above", type=float, default=None, metavar="MIB",
                   help="an image set (training, test or held out) whose preprocessed images would take more than "
                        "MIB MiB is read from its files as it is used instead of kept in memory (default: 1024; "
                        "0 streams every set)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers reading every image set (default: the CPU count less one, at most 8; "
                        "0 reads in the main process)")


SCENARIO_HELP = "a scenario YAML file, or the name of a bundled one (see: clipforget scenarios)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipforget", description="Make a CLIP model forget one subgroup of images and keep everything else.",
                                     epilog=MODEL_IDS + "\n" + EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"clipforget {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, epilog: str = MODEL_IDS) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    _eval_flags(command("eval", "zero-shot Target / Retain / held-out accuracy of a model on a scenario"))
    _forget_flags(command("forget", "make a model forget a scenario's subgroup; writes a run directory with report.html"))
    _bench_flags(command("bench", "every method on every scenario and seed, resumable; CSV, JSON, Markdown and report.html"))
    _audit_flags(command("audit", "can the forgotten subgroup still be found? an unlearned model against its original"))
    _mine_flags(command("mine", "build a scenario YAML from an unlabeled pool of images and a description of the subgroup"))
    _demo_flags(command("demo", "the built-in default: the method (ours) on the testbed model, with its report", epilog=""))
    command("scenarios", "list the bundled scenarios: what each forgets, and the data it needs", epilog="")
    command("methods", "list the registered methods: what each does, and the data it uses", epilog="")
    _config_flags(command("config", "print a method's (or the audit's) full default config as YAML, ready for --config",
                          epilog="example: clipforget config ours > ours.yaml; clipforget forget ... --config ours.yaml"))
    return parser


def _eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the model id (grammar below)")
    p.add_argument("--scenario", required=True, help=SCENARIO_HELP)
    p.add_argument("--out", help="also write the metrics as JSON to this file")
    _streaming(p)
    _common(p)


def _forget_flags(p: argparse.ArgumentParser) -> None:
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


def _bench_flags(p: argparse.ArgumentParser) -> None:
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


def _audit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the unlearned model id (e.g. testbed@runs/x/model)")
    p.add_argument("--original", required=True, help="the model it was unlearned from")
    p.add_argument("--scenario", required=True, help=SCENARIO_HELP)
    p.add_argument("--out", required=True, help="directory for audit.json and audit.md")
    p.add_argument("--seed", type=int, default=0, help="the seed of the audit's random choices (default: 0)")
    p.add_argument("--config", help="audit config YAML (default: the audit's defaults; see: clipforget config audit)")
    _train(p)
    _streaming(p)
    _common(p)


def _mine_flags(p: argparse.ArgumentParser) -> None:
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


def _demo_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="where the run directory goes (default: runs/demo)")
    _common(p)


def _config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="METHOD", help="a registered method, or 'audit' for the audit config")
