"""The Python API: what the command line calls, usable directly.

    import clipforget
    metrics = clipforget.evaluate("testbed", "cifar10-cat")
    result = clipforget.forget("openclip:RN50@openai", "my-scenario.yaml", out="runs/x")
"""

from __future__ import annotations

import logging
from pathlib import Path

from clipforget.data import (
    build_scenario,
    bundled_scenarios,
    load_scenario_config,
    open_sources,
)
from clipforget.evaluation import evaluate as _evaluate
from clipforget.methods import list_methods as _list_methods
from clipforget.metrics import ScenarioMetrics
from clipforget.models import DualEncoder, load_model
from clipforget.pipeline import ForgetResult, load_scenario_images, run_forget

log = logging.getLogger(__name__)


def evaluate(model: str | DualEncoder, scenario: str | Path, *, device: str = "cpu", batch_size: int = 64) -> ScenarioMetrics:
    """Zero-shot Target, Retain and held-out accuracy (%) of ``model`` on ``scenario``."""
    model = load_model(model, device=device) if isinstance(model, str) else model
    config = load_scenario_config(scenario)
    splits = build_scenario(config)
    images = load_scenario_images(splits, open_sources(config), model.preprocess, batch_size=batch_size)
    return _evaluate(model, splits, images, batch_size=batch_size)


def forget(model: str, scenario: str | Path, *, out: str | Path, method: str = "ours", **kwargs) -> ForgetResult:
    """Run ``method`` on ``scenario``; returns the unlearned model, its metrics and the run directory."""
    return run_forget(model, scenario, out, method=method, **kwargs)


def bench(model: str, scenarios, *, out: str | Path, methods=None, seeds=(0,), **kwargs) -> str:
    """Every method on every scenario and seed (resumable); returns the Markdown table."""
    from clipforget.bench import run_bench

    return run_bench(model, scenarios, out=out, methods=methods, seeds=seeds, **kwargs)


DEMO_MODEL = "testbed"
DEMO_SCENARIO = "cifar10-cat"
DEMO_SCENARIO_LOCAL = "fmnist-sneaker-local"  # needs only Debian's dataset-fashion-mnist


def demo(*, out: str | Path = "runs/demo", device: str = "cpu", batch_size: int = 64) -> ForgetResult:
    """The built-in default: the paper's method on the offline testbed model, with its report.

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


def list_scenarios() -> list[str]:
    return bundled_scenarios()


def list_methods() -> list[str]:
    return _list_methods()
