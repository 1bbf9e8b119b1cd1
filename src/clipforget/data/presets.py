"""Named label spaces and prompt-template presets a scenario may give by name instead of a list.

A held-out set may say ``classnames: imagenet1k`` (score its images over the 1000 ImageNet classes)
and any ``templates`` field may say ``templates: openai_imagenet``. Each name maps to a loader,
registered once below; :func:`register_label_space` / :func:`register_templates` add more and refuse
a name already taken. The scenario config expands a name into its list when it is built, so the
resolved config (written into every run) holds the lists themselves and its fingerprint follows
their content.

Templates are strings with ``{}`` where the class name goes. :func:`normalise_templates` also takes
CLIP_benchmark's ``{c}`` placeholder and open_clip's callable templates (``lambda c: f"a {c}."``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from clipforget.config import ConfigError

Loader = Callable[[], tuple[str, ...]]

LABEL_SPACES: dict[str, Loader] = {}
TEMPLATE_PRESETS: dict[str, Loader] = {}


def _register(registry: dict[str, Loader], kind: str, name: str, load: Loader) -> None:
    if name in registry:
        raise ValueError(f"{kind} {name!r} is already registered; pick another name")
    registry[name] = load


def register_label_space(name: str, load: Loader) -> None:
    """Make ``classnames: <name>`` mean ``load()`` (class names in label order)."""
    _register(LABEL_SPACES, "label space", name, load)


def register_templates(name: str, load: Loader) -> None:
    """Make ``templates: <name>`` mean ``load()`` (templates with ``{}`` or ``{c}``, or callables)."""
    _register(TEMPLATE_PRESETS, "template preset", name, load)


def label_space(name: str, where: str = "classnames") -> tuple[str, ...]:
    """The class names of the named label space."""
    if name not in LABEL_SPACES:
        raise ConfigError(
            f"{where}: {name!r} is not a named label space; known: {sorted(LABEL_SPACES)} (or give a list of names)"
        )
    return tuple(LABEL_SPACES[name]())


def template_preset(name: str, where: str = "templates") -> tuple[str, ...]:
    """The templates of the named preset, normalised to ``{}``."""
    if name.startswith(CLIP_BENCHMARK_PREFIX):
        return normalise_templates(clip_benchmark_templates(name[len(CLIP_BENCHMARK_PREFIX):], where))
    if name not in TEMPLATE_PRESETS:
        raise ConfigError(
            f"{where}: {name!r} is not a template preset; known: {sorted(TEMPLATE_PRESETS)} (or give a list of "
            "templates, e.g. ['a photo of a {}.'])"
        )
    return normalise_templates(TEMPLATE_PRESETS[name]())


CLIP_BENCHMARK_PREFIX = "clip_benchmark:"  # templates: clip_benchmark:<dataset> = CLIP_benchmark's English prompts


def clip_benchmark_templates(dataset: str, where: str = "templates") -> tuple[str, ...]:
    """CLIP_benchmark's English zero-shot templates of ``dataset`` (its fallback, ImageNet's, where it has none)."""
    import json

    try:
        folder = resources.files("clip_benchmark") / "datasets"
    except ModuleNotFoundError:
        raise ConfigError(f"{where}: {CLIP_BENCHMARK_PREFIX}{dataset} needs the clip_benchmark package: "
                          "pip install 'clipforget[benchmark]' (or pip install clip_benchmark)") from None
    table = json.loads((folder / "en_zeroshot_classification_templates.json").read_text())
    templates = table.get(dataset, table["imagenet1k"])
    if not isinstance(templates, list):  # a dict of class-specific prompts (CuPL style) has no {c} templates
        raise ConfigError(f"{where}: CLIP_benchmark's templates for {dataset!r} are per-class prompts; give a list")
    return tuple(templates)


def normalise_templates(templates: Sequence[Any]) -> tuple[str, ...]:
    """Strings with ``{}``: a callable is called with ``"{}"``, CLIP_benchmark's ``{c}`` becomes ``{}``.

    Anything else is passed through for the config's own checks to refuse.
    """
    called = (t("{}") if callable(t) else t for t in templates)
    return tuple(t.replace("{c}", "{}") if isinstance(t, str) else t for t in called)


def resolve_label_space(value: Any, where: str) -> Any:
    """A label-space field as given in a config: a preset name becomes its names; a list is kept."""
    return label_space(value, where) if isinstance(value, str) else value


def resolve_templates(value: Any, where: str) -> Any:
    """A templates field as given in a config: a preset name becomes its templates; a list is normalised."""
    if isinstance(value, str):
        return template_preset(value, where)
    if isinstance(value, Sequence):
        return normalise_templates(value)
    return value


# --- the presets --------------------------------------------------------------------------------

def imagenet_classnames() -> tuple[str, ...]:
    """The 1000 ImageNet class names in classifier order: the first lemma of each synset (timm's files).

    These are the names the Imagenette source gives its classes (``English springer``, ...). Two names
    repeat (``crane`` and ``maillot`` each name two synsets).
    """
    info = resources.files("timm") / "data" / "_info"
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    lines = (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
    lemmas = dict(line.split("\t", 1) for line in lines if line)
    names = tuple(lemmas[s].split(",")[0].strip() for s in synsets)
    if len(names) != 1000:
        raise ValueError(f"timm's imagenet_synsets.txt lists {len(names)} synsets, expected 1000")
    return names


def _open_clip_metadata() -> Any:
    from open_clip import zero_shot_metadata  # imported on use: open_clip pulls in torch

    return zero_shot_metadata


def openai_imagenet_classnames() -> tuple[str, ...]:
    """open_clip's curated ImageNet names (``English Springer Spaniel``, ...), in the same order."""
    return tuple(_open_clip_metadata().IMAGENET_CLASSNAMES)


# open_clip's curated list names two synsets "missile" and two "sunglasses"; a label space names each
# class once, so the second of each pair takes its WordNet lemma instead.
CLIP_NAME_FIXES = {"n04008634": "projectile", "n04355933": "sunglass"}


def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ImageNet-1K wnids in classifier order (timm's ``imagenet_synsets.txt``)."""
    return tuple((resources.files("timm") / "data" / "_info" / "imagenet_synsets.txt").read_text().split())


def imagenet_clip_classnames() -> tuple[str, ...]:
    """open_clip's curated ImageNet names, in classifier order, each class named once (``CLIP_NAME_FIXES``)."""
    return tuple(CLIP_NAME_FIXES.get(w, n) for w, n in zip(imagenet_synsets(), openai_imagenet_classnames(), strict=True))


def imagenet_wnid_names() -> dict[str, str]:
    """wnid -> its ``imagenet1k_clip`` name: the class names of the ``imagenet`` source."""
    return dict(zip(imagenet_synsets(), imagenet_clip_classnames(), strict=True))


register_label_space("imagenet1k", imagenet_classnames)
register_label_space("imagenet1k_clip", imagenet_clip_classnames)
register_label_space("imagenet1k_openai", openai_imagenet_classnames)
register_templates("openai_imagenet", lambda: tuple(_open_clip_metadata().OPENAI_IMAGENET_TEMPLATES))  # 80
register_templates("simple_imagenet", lambda: tuple(_open_clip_metadata().SIMPLE_IMAGENET_TEMPLATES))  # 7
