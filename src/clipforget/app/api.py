"""The Python API: what the command line calls, usable directly.

    import clipforget
    metrics = clipforget.evaluate("testbed", "cifar10-cat")
    result = clipforget.forget("openclip:RN50@openai", "my-scenario.yaml", out="runs/x")
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

from clipforget.audit import AuditResult, changed_parameters
from clipforget.audit import audit as _audit
from clipforget.config import ConfigError
from clipforget.data import (
    Streaming,
    build_scenario,
    bundled_scenarios,
    load_scenario_config,
    open_sources,
)
from clipforget.evaluation import evaluate_scenario
from clipforget.methods import list_methods as _list_methods
from clipforget.metrics import ScenarioMetrics
from clipforget.io import atomic_write_json
from clipforget.models import DualEncoder, load_model
from clipforget.models.prefix import FrozenImagePrefix
from clipforget.app.prepare import load_scenario_images, map_images
from clipforget.app.runner import AuditSetting, ForgetResult, resolve_audit_config, run_forget
from clipforget.app.report import write_audit_report
from clipforget.app.rundir import check_writable, refuse_overlap

log = logging.getLogger(__name__)


def evaluate(model: str | DualEncoder, scenario: str | Path, *, device: str = "cpu", batch_size: int = 64,
             streaming: Streaming = Streaming()) -> ScenarioMetrics:
    """Zero-shot Target, Retain and held-out accuracy (%) of ``model`` on ``scenario`` (held-out sets
    streamed as ``streaming`` says)."""
    model = load_model(model, device=device) if isinstance(model, str) else model
    config = load_scenario_config(scenario)
    splits = build_scenario(config)
    images = load_scenario_images(splits, open_sources(config), model.preprocess, batch_size=batch_size,
                                  streaming=streaming)
    return evaluate_scenario(model, splits, images, batch_size=batch_size)


def forget(model: str, scenario: str | Path, *, out: str | Path, method: str = "ours", **kwargs) -> ForgetResult:
    """Run ``method`` on ``scenario``; returns the unlearned model, its metrics and the run directory."""
    return run_forget(model, scenario, out, method=method, **kwargs)


def forget_together(model: str, scenarios, *, out: str | Path, method: str = "ours", **kwargs):
    """Forget every scenario's subgroup in one run (:mod:`clipforget.app.together`); one ForgetResult per scenario."""
    from clipforget.app.together import run_forget_together

    return run_forget_together(model, scenarios, out, method=method, **kwargs)


def mine(model: str | DualEncoder, pool: str | Path, query: str, label: str, *, out: str | Path,
         aliases=(), classnames=None, templates=None, truth: str | None = None, config=None, seed: int = 0,
         device: str = "cpu", batch_size: int = 64):
    """Mine a scenario YAML from an unlabeled ``pool`` and a description (:mod:`clipforget.app.mined_scenario`);
    returns its :class:`clipforget.app.mined_scenario.MineResult` (paths written, counts, precision / recall)."""
    from clipforget.app.mined_scenario import DEFAULT_TEMPLATES, mine_scenario
    from clipforget.mining import MineConfig

    if isinstance(config, (str, Path)):
        config = MineConfig.from_yaml(config)
    elif isinstance(config, dict):
        config = MineConfig.from_dict(config)
    model_id = model if isinstance(model, str) else str(model.spec)
    out = Path(out)
    check_writable(out.parent, what="a scenario YAML file")
    loaded = load_model(model, device=device) if isinstance(model, str) else model
    return mine_scenario(loaded.eval(), pool, query, label, out, aliases=aliases, classnames=classnames,
                         templates=templates or DEFAULT_TEMPLATES, truth=truth, config=config, seed=seed,
                         model_id=model_id, batch_size=batch_size)


def read_ledger(model: str, *, device: str = "cpu"):
    """The requests clipforget applied to a saved model (:class:`clipforget.app.ledger.Ledger`), checked against its weights."""
    from clipforget.app.ledger import read_ledger as _read

    return _read(model, load_model(model, device=device))


def bench(model: str, scenarios, *, out: str | Path, methods=None, seeds=(0,), **kwargs) -> str:
    """Every method on every scenario and seed (resumable); returns the Markdown table."""
    from clipforget.app.bench import run_bench

    return run_bench(model, scenarios, out=out, methods=methods, seeds=seeds, **kwargs)


def audit(model: str, original: str, scenario: str | Path, *, out: str | Path, seed: int = 0,
          config: AuditSetting = True, device: str = "cpu", batch_size: int = 64,
          image_prefix: str | None = "auto", precision: str | None = "auto",
          streaming: Streaming = Streaming()) -> AuditResult:
    """Audit the unlearned ``model`` against ``original`` on ``scenario``; writes out/audit.json and audit.md.

    Images are preprocessed once per preprocessing (twice only when the two models differ in it).
    ``image_prefix`` ("auto": the backend's default) runs both models from that image stage on, on
    activations computed once, when the two agree on every weight and buffer before it; else whole images.
    ``precision``, ``streaming``: as for :func:`clipforget.app.runner.run_forget`.
    """
    from clipforget.precision import autocast, resolve_precision

    precision = resolve_precision(precision, device)
    out = Path(out)
    _check_audit_out(out, (model, original))
    audit_cfg = resolve_audit_config(config)
    if audit_cfg is None:
        raise ConfigError("the audit config is off; give a config (or none for the defaults)")
    scenario_cfg = load_scenario_config(scenario)
    splits = build_scenario(scenario_cfg)
    before, after = load_model(original, device=device).eval(), load_model(model, device=device).eval()
    sources = open_sources(scenario_cfg)
    images = load_scenario_images(splits, sources, before.preprocess, batch_size=batch_size, streaming=streaming)
    same = same_preprocess(before.preprocess, after.preprocess)
    after_images = images if same else load_scenario_images(splits, sources, after.preprocess, batch_size=batch_size,
                                                                         streaming=streaming)
    tuned = changed_parameters(before, after)
    if image_prefix == "auto":
        image_prefix = before.default_image_prefix
    if same and image_prefix is not None and _prefix_agrees(before, after, image_prefix):
        view = FrozenImagePrefix(before, image_prefix)
        before, after = view, FrozenImagePrefix(after, image_prefix)
        images = after_images = map_images(images, functools.partial(view.prefix, batch_size=batch_size),
                                            f"frozen image stages before {image_prefix}")
    else:
        image_prefix = None
    with autocast(precision, device):
        result = _audit(before, after, splits, images, audit_cfg, seed=seed, tuned=tuned, unlearned_images=after_images)
    atomic_write_json(out / "audit.json", {"model": model, "original": original, "scenario": splits.name,
                                           "image_prefix": image_prefix, "precision": precision, **result.to_dict()})
    write_audit_report(out, f"clipforget audit: {model} against {original} on {splits.name}")
    return result


def _check_audit_out(out: Path, model_ids) -> None:
    """Refuse an --out that is (or lies under) a file, is read-only, or overlaps an input checkpoint: before loading anything."""
    check_writable(out, what="a directory (audit.json, audit.md)")
    refuse_overlap(out, model_ids)


def same_preprocess(a, b) -> bool:
    """Whether two preprocessings give the same tensor for a probe image (compared by content, not by name)."""
    if a is b:
        return True
    from PIL import Image

    grid = torch.arange(45 * 67 * 3, dtype=torch.int64).reshape(45, 67, 3)
    probe = Image.fromarray((grid * 37 % 256).to(torch.uint8).numpy(), "RGB")
    x, y = a(probe), b(probe)
    return x.shape == y.shape and torch.equal(x, y)


def _prefix_agrees(a: DualEncoder, b: DualEncoder, image_prefix: str) -> bool:
    """Whether every weight and buffer of the image stages before ``image_prefix`` is equal in both models."""
    stages = a.image_stages()
    names = [s.name for s in stages or ()]
    if image_prefix not in names:
        return False
    frozen = stages[: names.index(image_prefix)]
    sa, sb = a.weights(), b.weights()
    keys = [k for k in sa if any(s.owns(k) for s in frozen)]
    differ = [k for k in keys if k not in sb or sa[k].shape != sb[k].shape or not torch.equal(sa[k], sb[k])]
    if differ:
        log.info("the models differ before image stage %s (%s ...): auditing on whole images", image_prefix, differ[0])
    return not differ


DEMO_MODEL = "testbed"
DEMO_SCENARIO = "cifar10-cat"
DEMO_SCENARIO_LOCAL = "fmnist-sneaker-local"  # needs only Debian's dataset-fashion-mnist


def demo(*, out: str | Path = "runs/demo", device: str = "cpu", batch_size: int = 64) -> ForgetResult:
    """The built-in default: ``ours`` on the offline testbed model, with its report.

    Uses ``cifar10-cat`` when the CIFAR-10 / Imagenette archives are found, else Fashion-MNIST alone.
    """
    from clipforget.data import DataNotFoundError

    scenario = DEMO_SCENARIO
    try:
        build_scenario(scenario)
    except DataNotFoundError as e:
        log.warning("%s; the demo runs %s (Fashion-MNIST only) instead", e, DEMO_SCENARIO_LOCAL)
        scenario = DEMO_SCENARIO_LOCAL
    return run_forget(DEMO_MODEL, scenario, Path(out) / scenario, device=device, batch_size=batch_size)


def format_metrics(metrics: ScenarioMetrics) -> str:
    lines = [f"Target  {metrics.target:5.1f}", f"Retain  {metrics.retain:5.1f}"]
    lines += [f"{name:<7} {acc:5.1f}  (held out)" for name, acc in metrics.heldout.items()]
    return "\n".join(lines)


def format_audit(result: AuditResult) -> str:
    """The audit's headline figures and flags, original -> unlearned, one per line."""
    from clipforget.audit import audit_summary

    summary = audit_summary(result.to_dict())
    lines = []
    if "target_worst" in summary:
        lines.append(f"Target, worst prompt    {summary['target_worst']['original']:5.1f} -> {summary['target_worst']['unlearned']:5.1f}")
    if "search_share" in summary:
        lines.append(f"search share, worst     {summary['search_share']['original']:5.1f} -> {summary['search_share']['unlearned']:5.1f}"
                     f"  (chance {summary['search_chance']:.1f})")
    if "relearn" in summary:
        r = summary["relearn"]
        lines.append(f"relearn Target @{summary['relearn_steps']:<3d}    {r.get('original', float('nan')):5.1f} -> {r['unlearned']:5.1f}"
                     f"  ({summary['relearn_setting']})")
    lines += [f"{k:<24}{'-' if v is None else ('yes' if v else 'no')}" for k, v in result.verdict["flags"].items()]
    return "\n".join(lines)


def format_mining(summary) -> str:
    """What ``mine`` found, one figure per line."""
    lines = [f"pool images             {summary['pool_images']}", f"forget set (mined)      {summary['forget']}",
             f"retain set              {sum(summary['retain'].values())} ({', '.join(f'{k} {v}' for k, v in summary['retain'].items())})",
             f"calibration set         {sum(summary['calibration'].values())}"]
    c = summary.get("comparison")
    if c:
        lines += [f"precision               {c['precision']:5.1f}  ({c['true_positives']} of {c['mined']} mined are {summary['truth']!r})",
                  f"recall                  {c['recall']:5.1f}  (of {c['subgroup_images']} {summary['truth']!r} images)",
                  f"leaked into retain      {c['leaked_retain']:5.1f}",
                  f"leaked into calibration {c['leaked_calibration']:5.1f}"]
    return "\n".join(lines)


def list_scenarios() -> list[str]:
    return bundled_scenarios()


def list_methods() -> list[str]:
    return _list_methods()
