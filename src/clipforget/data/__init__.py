"""Image sources, scenarios and the splits built from them.

Typical use::

    from clipforget.data import build_scenario, open_sources, load_images

    splits = build_scenario("cifar10-cat")          # a bundled name or a YAML path
    sources = open_sources("cifar10-cat")           # source name -> ImageSource
    images = load_images(splits.target.records, sources, model.preprocess)   # (N, 3, H, W)
"""

from clipforget.data.loading import RecordDataset, StreamedImages, Streaming, default_workers, load_images
from clipforget.data.locations import DataNotFoundError, cache_dir
from clipforget.data.scenario import (
    ScenarioConfig,
    build_scenario,
    bundled_scenarios,
    load_scenario_config,
    open_sources,
    scenario_fingerprint,
)
from clipforget.data.sources import (
    Entry,
    ImageLoadError,
    ImageSource,
    SourceConfig,
    open_source,
    register_source_kind,
)
from clipforget.data.types import EvalSet, Record, ScenarioSplits

__all__ = [
    "DataNotFoundError",
    "Entry",
    "EvalSet",
    "ImageLoadError",
    "ImageSource",
    "Record",
    "RecordDataset",
    "ScenarioConfig",
    "ScenarioSplits",
    "SourceConfig",
    "build_scenario",
    "bundled_scenarios",
    "cache_dir",
    "load_images",
    "StreamedImages",
    "Streaming",
    "default_workers",
    "load_scenario_config",
    "open_source",
    "open_sources",
    "register_source_kind",
    "scenario_fingerprint",
]
