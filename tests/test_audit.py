"""The forgetting audit on constructed edits whose answer is known, its determinism and its config.

The constructed model: a tiny open_clip ResNet image tower with a centring head, and a text tower that
is a word table holding class prototypes (the mean image embedding of each class's training images),
so zero-shot classification works on the synthetic scenario and every edit below has a known effect.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import yaml
from synthetic import tiny_scenario_dict
from torch import Tensor, nn

from clipforget.audit import AuditConfig, audit, auc_interval, changed_parameters, linear_probe, retrieval
from clipforget.config import ConfigError
from clipforget.evaluation import evaluate_scenario
from clipforget.models.base import DualEncoder, ModelSpec, TextBatch, normalize
from clipforget.app.prepare import prepare

ALIASES = ["springer", "English springer"]
FAST = AuditConfig(relearn_steps=(2, 5))


class Scrub(nn.Module):
    """Image-side removal: images whose mean colour lies within ``radius`` of ``marker`` embed as ``far``."""

    def __init__(self, dim: int):
        super().__init__()
        self.far = nn.Parameter(torch.zeros(dim))
        self.register_buffer("marker", torch.zeros(3))
        self.register_buffer("radius", torch.zeros(()))  # 0: off

    def forward(self, images: Tensor, emb: Tensor) -> Tensor:
        marked = (images.mean((2, 3)) - self.marker).norm(dim=1) < self.radius
        return torch.where(marked[:, None], normalize(self.far).expand_as(emb), emb)


class ProtoNet(nn.Module):
    def __init__(self, visual: nn.Module, dim: int, words: int):
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(dim, dim)
        self.scrub = Scrub(dim)
        self.words = nn.Embedding(words + 1, dim)  # the last row: words not in the vocabulary
        self.logit_scale = nn.Parameter(torch.tensor(3.0))


class ProtoModel(DualEncoder):
    """A DualEncoder over :class:`ProtoNet`; a text embeds as the row of the longest vocabulary word in it."""

    backend = "proto"
    image_prefixes = ("visual.", "head.", "scrub.")
    text_prefixes = ("words.",)

    def __init__(self, net: ProtoNet, vocabulary: Sequence[str], preprocess):
        super().__init__(net, ModelSpec.parse("proto"), preprocess)
        self.vocabulary = tuple(vocabulary)

    def encode_image(self, images: Tensor) -> Tensor:
        emb = normalize(self.model.head(self.model.visual(images)))
        return self.model.scrub(images, emb)

    def encode_text(self, text: TextBatch) -> Tensor:
        return normalize(self.model.words(text["input_ids"].to(self.device)))

    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        order = sorted(range(len(self.vocabulary)), key=lambda i: -len(self.vocabulary[i]))

        def word(text: str) -> int:
            return next((i for i in order if re.search(rf"\b{re.escape(self.vocabulary[i])}\b", text, re.I)), len(self.vocabulary))

        return {"input_ids": torch.tensor([word(t) for t in texts])}

    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.exp()

    def save(self, directory):  # pragma: no cover - never saved
        raise NotImplementedError

    def saved_id(self, directory):  # pragma: no cover
        raise NotImplementedError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_scenario(tmp_path_factory.mktemp("audit"))


def prepare_scenario(root: Path):
    """The tiny springer scenario with two aliases, prepared for a tiny open_clip ResNet."""
    from tiny import register_tiny_openclip

    register_tiny_openclip(root)
    scenario = tiny_scenario_dict(root)
    scenario["forget"]["aliases"] = ALIASES
    path = root / "tiny-springer.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    torch.manual_seed(0)
    return prepare("openclip:tiny-RN", path)


@pytest.fixture(scope="module")
def proto(prepared) -> ProtoModel:
    return build_proto(prepared)


def build_proto(prepared) -> ProtoModel:
    """A least-squares head maps each training group (springer, poodle, cat, car) to its own orthonormal
    direction; the word table holds the groups' mean embeddings: dog = springer + poodle, springer (and
    its aliases), cat, car."""
    images, classes = prepared.images, prepared.splits.classnames
    visual = copy.deepcopy(prepared.model.model.visual).eval()
    retain = images.retain_train
    groups = [images.forget_train, retain.images[retain.labels == classes.index("dog")],
              retain.images[retain.labels == classes.index("cat")],
              images.calibration.images[images.calibration.labels == classes.index("car")]]
    with torch.no_grad():
        feats = torch.cat([visual(g) for g in groups]).double()
        group = torch.cat([torch.full((len(g),), i) for i, g in enumerate(groups)])
        dim = feats.shape[1]
        axes = torch.linalg.qr(torch.randn(dim, len(groups), generator=torch.Generator().manual_seed(0)).double())[0].T
        solution = torch.linalg.lstsq(torch.cat([feats, torch.ones(len(feats), 1, dtype=feats.dtype)], 1), axes[group]).solution
        net = ProtoNet(visual, dim, words=len(ALIASES) + 3)
        net.head.weight.copy_(solution[:-1].T)
        net.head.bias.copy_(solution[-1])
        emb = normalize(net.head(feats.float()))
        springer, poodle, cat, car = (normalize(emb[group == i].mean(0)) for i in range(len(groups)))
        rows = [springer + poodle, cat, car, *[springer] * len(ALIASES)]
        net.words.weight.copy_(torch.stack([*rows, torch.zeros_like(cat)]))
    return ProtoModel(net, ["dog", "cat", "car", *ALIASES], prepared.model.preprocess).eval()


def text_only_edit(model: ProtoModel) -> ProtoModel:
    """Move the label's text embedding (the row of "dog") to the opposite side; images untouched."""
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.model.words.weight[0].neg_()
    return edited


def image_side_removal(model: ProtoModel, images) -> ProtoModel:
    """Embed the springer photos (a colour marker: their mean colour) opposite their own prototype."""
    removed = copy.deepcopy(model)
    scrub = removed.model.scrub
    with torch.no_grad():
        marker = images.forget_train.mean((0, 2, 3))
        others = torch.cat([images.retain.images, *(s.images for s in images.heldout.values())]).mean((2, 3))
        scrub.marker.copy_(marker)
        scrub.radius.fill_(0.5 * float((others - marker).norm(dim=1).min()))
        scrub.far.copy_(-removed.model.words.weight[len(model.vocabulary) - 1])  # minus the springer prototype
    return removed


def test_the_constructed_model_recognises_the_subgroup(proto, prepared):
    metrics = evaluate_scenario(proto, prepared.splits, prepared.images)
    assert metrics.target == 100.0 and metrics.retain == 100.0


def test_a_text_only_edit_is_flagged(proto, prepared):
    edited = text_only_edit(proto)
    assert changed_parameters(proto, edited) == ("words.weight",)
    result = audit(proto, edited, prepared.splits, prepared.images, FAST, seed=0).to_dict()
    names = result["parts"]["names"]
    label = next(p for p in names["prompts"] if p["name"] == "dog" and p["templates"] == "scenario")
    assert label["original"] == evaluate_scenario(proto, prepared.splits, prepared.images).target == 100.0
    assert label["unlearned"] == 0.0, "the label's own prompt no longer finds the subgroup"
    assert names["target_worst"]["unlearned"] == 100.0 and names["worst_prompt"]["unlearned"]["name"] in ALIASES
    assert names["fine_grained"]["aliases"]["English springer"]["unlearned"] == 100.0
    image = result["parts"]["image"]
    assert image["cosine_target"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert image["probe"]["unlearned"] == image["probe"]["original"]
    search = result["parts"]["search"]
    assert search["worst"]["unlearned"]["share"] == 100.0 and search["worst"]["unlearned"]["query"] != "a photo of a dog."
    flags = result["verdict"]["flags"]
    assert flags["names_closed"] is False and flags["search_near_chance"] is False and flags["image_moved"] is False
    assert result["verdict"]["every_road_closed"] is False
    relearn = result["parts"]["relearn"]
    assert relearn["changed"] == ["words.weight"] and relearn["towers"] == ["text"]
    assert relearn["before"] == {"original": 100.0, "unlearned": 0.0}


def test_an_image_side_removal_passes(proto, prepared):
    removed = image_side_removal(proto, prepared.images)
    result = audit(proto, removed, prepared.splits, prepared.images, FAST, seed=0).to_dict()
    names, search, image = (result["parts"][k] for k in ("names", "search", "image"))
    assert names["target_worst"] == {"original": 100.0, "unlearned": 0.0}
    assert search["worst"]["original"]["share"] == 100.0
    assert search["worst"]["unlearned"]["share"] <= 2 * search["chance"]
    assert image["cosine_target"]["mean"] < 0 and image["cosine_retain"]["mean"] == pytest.approx(1.0, abs=1e-6)
    flags = result["verdict"]["flags"]
    assert flags["names_closed"] and flags["search_near_chance"] and flags["image_moved"]
    assert result["parts"]["relearn"]["changed"] == ["scrub.far"]


def test_every_number_is_reproducible_under_the_seed(proto, prepared):
    edited = text_only_edit(proto)
    first = audit(proto, edited, prepared.splits, prepared.images, FAST, seed=3).to_dict()
    second = audit(proto, edited, prepared.splits, prepared.images, FAST, seed=3).to_dict()
    assert set(first["seconds"]) == set(FAST.parts)
    first.pop("seconds"), second.pop("seconds")
    assert first == second
    assert edited.training is False and proto.training is False


def test_parts_switch_off_and_the_result_is_json(proto, prepared):
    import json

    result = audit(proto, proto, prepared.splits, prepared.images, AuditConfig(parts=("search", "membership")), seed=0)
    d = json.loads(json.dumps(result.to_dict()))
    assert set(d["parts"]) == set(d["notes"]) == set(d["seconds"]) == {"search", "membership"}
    assert set(d["verdict"]["flags"]) == {"search_near_chance", "membership_hidden"}
    assert d["parts"]["membership"]["similarity"]["original"] == d["parts"]["membership"]["similarity"]["unlearned"]


def test_relearning_an_unchanged_model_is_skipped_and_said(proto, prepared):
    result = audit(proto, proto, prepared.splits, prepared.images, AuditConfig(parts=("relearn",)), seed=0).to_dict()
    for entry in result["parts"]["relearn"]["settings"].values():
        assert entry["parameters"] == 0 and "changed no parameter" in entry["skipped"]
    assert result["verdict"]["flags"]["relearn_resists"] is None


@pytest.mark.parametrize("fields, message", [
    ({"relearn_k": 0}, "relearn_k"),
    ({"relearn_steps": (-1,)}, "relearn_steps"),
    ({"relearn_steps": (50, 10)}, "relearn_steps"),
    ({"parts": ("names", "nope")}, "unknown part"),
    ({"templates": "no_such_preset"}, "template preset"),
    ({"templates": ("a photo",)}, "templates"),
    ({"relearn_settings": ("all",)}, "relearn_settings"),
])
def test_bad_settings_get_one_clear_error(fields, message):
    with pytest.raises(ConfigError, match=message):
        AuditConfig(**fields)


def test_bad_settings_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "audit.yaml"
    path.write_text("parts: [names, nope]\n")
    with pytest.raises(ConfigError, match="nope"):
        AuditConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="relearn_k"):
        AuditConfig().with_overrides(["relearn_k=0"])
    with pytest.raises(ConfigError, match="max_image_cosine"):
        AuditConfig().with_overrides(["thresholds.max_image_cosine=2"])
    assert AuditConfig.from_dict(AuditConfig().to_dict()) == AuditConfig()


def test_the_statistics_on_known_inputs():
    assert auc_interval(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0]))["auc"] == 1.0
    tied = auc_interval(torch.ones(20), torch.ones(30))
    assert tied["auc"] == 0.5 and tied["low"] < 0.5 < tied["high"]
    gallery = torch.eye(4)
    hit = retrieval(gallery, torch.tensor([True, True, False, False]), torch.tensor([1.0, 0.5, 0.0, 0.0]))
    assert hit == {"share": 100.0, "mean_rank": 1.5}
    miss = retrieval(gallery, torch.tensor([False, False, True, True]), torch.tensor([1.0, 0.5, 0.0, 0.0]))
    assert miss == {"share": 0.0, "mean_rank": 3.5}
    x = torch.cat([torch.randn(20, 4, generator=torch.Generator().manual_seed(0)) + 3, torch.randn(30, 4)])
    y = torch.cat([torch.ones(20), torch.zeros(30)])
    assert linear_probe(x, y, x, y) == 100.0


def test_the_audit_on_a_frozen_prefix_view_equals_whole_images(prepared):
    """The pipeline audits on prefix activations (testbed): the figures must be those of whole images."""
    from clipforget.models.prefix import FrozenImagePrefix
    from clipforget.app.prepare import map_images

    model = prepared.model
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.model.text_projection.mul_(-1)
    config = AuditConfig(parts=("names", "search", "image", "membership"), templates=("a photo of a {}.",))
    whole = audit(model, edited, prepared.splits, prepared.images, config, seed=0).to_dict()
    view_o, view_u = FrozenImagePrefix(model, "visual.layer4"), FrozenImagePrefix(edited, "visual.layer4")
    images = map_images(prepared.images, view_o.prefix)
    viewed = audit(view_o, view_u, prepared.splits, images, config, seed=0).to_dict()
    for part in config.parts:
        assert _rounded(viewed["parts"][part]) == _rounded(whole["parts"][part]), part


def _rounded(x):
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "docs" / "examples" / "audit").glob("*.yaml")))
def test_every_shipped_audit_config_is_valid(path):
    from clipforget.app.runner import resolve_audit_config

    config = resolve_audit_config(str(path))
    assert isinstance(config, AuditConfig) and config != AuditConfig(), f"{path.name} changes nothing"
