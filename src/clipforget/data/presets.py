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
    if name not in TEMPLATE_PRESETS:
        raise ConfigError(
            f"{where}: {name!r} is not a template preset; known: {sorted(TEMPLATE_PRESETS)} (or give a list of "
            "templates, e.g. ['a photo of a {}.'])"
        )
    return normalise_templates(TEMPLATE_PRESETS[name]())


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


register_label_space("imagenet1k", imagenet_classnames)
register_label_space("imagenet1k_openai", openai_imagenet_classnames)
register_templates("openai_imagenet", lambda: tuple(_open_clip_metadata().OPENAI_IMAGENET_TEMPLATES))  # 80
register_templates("simple_imagenet", lambda: tuple(_open_clip_metadata().SIMPLE_IMAGENET_TEMPLATES))  # 7
