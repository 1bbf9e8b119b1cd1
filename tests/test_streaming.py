"""Image sets streamed from disk (held out, test and training sets), and image embeddings remembered
while the image side is unchanged."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from synthetic import build_tiny_scenario

from clipforget.app.cli import main
from clipforget.config import ConfigError
from clipforget.data import StreamedImages, Streaming, build_scenario, load_images, load_scenario_config, open_sources
from clipforget.models import load_model
from clipforget.app.prepare import images_digest, load_scenario_images, unlearn_data
from clipforget.data.loading import join, take
from clipforget.methods import get_method, list_methods
from clipforget.app.runner import run_forget
from clipforget import zeroshot

AUDIT = {"templates": ["a photo of a {}.", "itap of a {}."], "relearn_steps": [1, 2]}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Path:
    return build_tiny_scenario(tmp_path_factory.mktemp("scenario"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tiny import register_tiny_openclip

    register_tiny_openclip(tmp_path_factory.mktemp("cfg"))
    torch.manual_seed(0)
    return load_model("openclip:tiny-RN").eval()


@pytest.fixture(scope="module")
def fruit(tmp_path_factory, model):
    """A streamed set of 12 synthetic images and its records' sources."""
    config = load_scenario_config(build_tiny_scenario(tmp_path_factory.mktemp("fruit")))
    splits = build_scenario(config)
    records = splits.retain.records + splits.target.records
    return records, open_sources(config)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_streamed_set_yields_the_tensor_load_images_stacks(fruit, model, workers):
    records, sources = fruit
    stacked = load_images(records, sources, model.preprocess)
    streamed = StreamedImages(records, sources, model.preprocess, workers=workers)
    assert len(streamed) == len(stacked) and streamed.num_batches(5) == 3
    assert torch.equal(torch.cat(list(streamed.batches(5))), stacked)
    assert torch.equal(streamed.subset(slice(3, 7)).load(batch_size=2), stacked[3:7])
    assert torch.equal(streamed.then("twice", lambda x: 2 * x).load(), 2 * stacked)
    assert streamed.decoded_bytes() == stacked.numel() * stacked.element_size()


def test_identity_names_the_records_and_the_steps(fruit, model):
    records, sources = fruit
    a = StreamedImages(records, sources, model.preprocess)
    assert a.identity() == StreamedImages(records, sources, model.preprocess).identity()
    assert a.identity() != a.subset(slice(1, None)).identity()
    assert a.identity() != a.then("prefix", lambda x: x).identity()


def test_a_streamed_set_is_indexed_as_its_tensor_would_be(fruit, model):
    records, sources = fruit
    stacked = load_images(records, sources, model.preprocess)
    streamed = StreamedImages(records, sources, model.preprocess, workers=2)
    index = torch.tensor([7, 0, 7, 3])
    assert torch.equal(streamed[index], stacked[index]) and torch.equal(streamed[2], stacked[2])
    assert torch.equal(streamed[3:9:2], stacked[3:9:2]) and streamed[5:5].shape == (0, *stacked.shape[1:])
    assert streamed.shape == stacked.shape and streamed.ndim == 4
    assert torch.equal(take(streamed, index).load(), stacked[index])  # a subset is still streamed
    assert torch.equal(take(stacked, index), stacked[index])
    assert torch.equal(join(streamed.subset(slice(0, 4)), streamed.subset(slice(4, None))).load(), stacked)
    assert torch.equal(streamed.then("twice", lambda x: 2 * x)[index], 2 * stacked[index])
    with pytest.raises(ValueError, match="stream both or neither"):
        join(streamed, stacked)


def test_every_set_streams_above_the_threshold(scenario, model):
    config = load_scenario_config(scenario)
    splits, sources = build_scenario(config), open_sources(config)
    kept = load_scenario_images(splits, sources, model.preprocess, streaming=Streaming(workers=1))  # read in a worker
    everything = load_scenario_images(splits, sources, model.preprocess, streaming=Streaming(above_mib=0))
    sets = {"forget_train": lambda s: s.forget_train, **{k: (lambda s, k=k: getattr(s, k).images) for k in
            ("retain_train", "calibration", "target", "retain")}, "fruit": lambda s: s.heldout["fruit"].images}
    for name, get in sets.items():
        assert isinstance(get(kept), torch.Tensor) and isinstance(get(everything), StreamedImages), name
        assert torch.equal(get(everything).load(), get(kept)), name
    sizes = {name: get(kept).numel() * 4 / 2**20 for name, get in sets.items()}
    middle = sorted(set(sizes.values()))[len(set(sizes.values())) // 2]  # the larger half streams
    some = load_scenario_images(splits, sources, model.preprocess, streaming=Streaming(above_mib=middle - 1e-9))
    assert {n for n, get in sets.items() if isinstance(get(some), StreamedImages)} == {n for n, v in sizes.items() if v >= middle}
    assert images_digest(everything) != images_digest(kept)  # a resume key says how the images were held


@pytest.mark.parametrize("name", sorted(set(list_methods()) - {"ours-paper"}))
def test_every_method_trains_on_streamed_sets_as_on_tensors(scenario, model, name):
    config = load_scenario_config(scenario)
    splits, sources = build_scenario(config), open_sources(config)
    method = get_method(name)
    weights = {}
    for how, streaming in (("memory", Streaming()), ("streamed", Streaming(above_mib=0))):
        data = unlearn_data(splits, load_scenario_images(splits, sources, model.preprocess, streaming=streaming))
        assert isinstance(data.retain_images, StreamedImages) == (how == "streamed")
        weights[how] = method.run(copy.deepcopy(model), data, method.smoke_config(), seed=0).model.weights()
    for k, v in weights["memory"].items():
        assert torch.allclose(weights["streamed"][k], v, atol=1e-5), (name, k)


def test_alignment_on_a_streamed_retain_set_is_refused_clearly(scenario, model):
    config = load_scenario_config(scenario)
    splits, sources = build_scenario(config), open_sources(config)
    data = unlearn_data(splits, load_scenario_images(splits, sources, model.preprocess, streaming=Streaming(above_mib=0)))
    method = get_method("ours-paper")
    with pytest.raises(ConfigError, match=r"alignment .* needs the set in memory.*--stream-above"):
        method.run(copy.deepcopy(model), data, method.smoke_config(), seed=0)


def _saved_rn(tmp_path: Path):
    from tiny import register_tiny_openclip

    register_tiny_openclip(tmp_path / "cfg")
    torch.manual_seed(0)
    load_model("openclip:tiny-RN").save(tmp_path / "ckpt")
    return f"openclip:local-dir:{tmp_path / 'ckpt'}", None


def _saved_testbed(tmp_path: Path):  # a frozen image prefix: streamed batches pass it on the fly
    from tiny import make_tiny_testbed

    model_id = make_tiny_testbed(tmp_path / "ckpt")
    model = load_model(model_id).eval()
    model.default_image_prefix = "image_tower.blocks.3"  # the tiny network has fewer blocks than the testbed
    return model_id, model


@pytest.mark.parametrize("make_model", [_saved_rn, _saved_testbed], ids=["openclip-RN", "testbed-prefix"])
def test_a_run_with_streamed_held_out_sets_scores_and_audits_as_one_in_memory(scenario, tmp_path, make_model):
    model_id, model = make_model(tmp_path)
    runs = {}
    for name, streaming in (("memory", Streaming()), ("streamed", Streaming(above_mib=0, workers=1))):
        run_forget(model_id, scenario, tmp_path / name, audit=AUDIT, streaming=streaming,
                   model=None if model is None else copy.deepcopy(model))
        runs[name] = (json.loads((tmp_path / name / "metrics.json").read_text()),
                      json.loads((tmp_path / name / "audit.json").read_text()))
    (m_mem, a_mem), (m_str, a_str) = runs["memory"], runs["streamed"]
    for side in ("original", "unlearned"):
        assert m_str[side]["heldout"] == pytest.approx(m_mem[side]["heldout"], abs=1e-9)
        assert m_str[side]["target"] == pytest.approx(m_mem[side]["target"], abs=1e-9)
    assert m_str["score"] == pytest.approx(m_mem["score"], abs=1e-9)
    assert a_str["parts"]["search"] == a_mem["parts"]["search"] and "worst" in a_mem["parts"]["search"]


class _Counting:
    """Counts the images a model's image tower sees."""

    def __init__(self, model):
        self.model, self.seen = model, 0
        inner = model.encode_image

        def encode_image(images):
            self.seen += len(images)
            return inner(images)

        model.encode_image = encode_image


def test_embeddings_of_a_large_set_are_remembered_until_the_image_side_changes(model):
    counting = _Counting(model)
    images = torch.randn(zeroshot._EMB_MEMO_MIN_IMAGES["cpu"], 3, 32, 32, generator=torch.Generator().manual_seed(0))
    first = zeroshot.compute_image_embeddings(model, images, progress=False)
    assert counting.seen == len(images)
    text_param = next(p for n, p in model.named_weights() if model.tower_of(n) == "text")
    with torch.no_grad():
        text_param.add_(1.0)  # the text side does not change an image embedding
    assert torch.equal(zeroshot.compute_image_embeddings(model, images, progress=False), first)
    assert counting.seen == len(images)
    image_param = next(p for n, p in model.named_weights() if model.tower_of(n) == "image")
    with torch.no_grad():
        image_param.mul_(1.5)
    changed = zeroshot.compute_image_embeddings(model, images, progress=False)
    assert counting.seen == 2 * len(images) and not torch.equal(changed, first)
    images.mul_(0.5)  # the same tensor, changed in place: not the same images any more
    zeroshot.compute_image_embeddings(model, images, progress=False)
    assert counting.seen == 3 * len(images)
    small = images[: zeroshot._EMB_MEMO_MIN_IMAGES["cpu"] - 1].clone()
    zeroshot.compute_image_embeddings(model, small, progress=False)
    zeroshot.compute_image_embeddings(model, small, progress=False)
    assert counting.seen == 3 * len(images) + 2 * len(small)  # small sets cost less than hashing the weights
    model.train()  # dropout and batch statistics: embeddings are not a function of the weights
    try:
        before = counting.seen
        zeroshot.compute_image_embeddings(model, images, progress=False)
        zeroshot.compute_image_embeddings(model, images, progress=False)
        assert counting.seen == before + 2 * len(images)
    finally:
        model.eval()
        del model.encode_image


@pytest.mark.parametrize("kwargs, message", [({"above_mib": -1}, "0 MiB or more"), ({"above_mib": float("nan")}, "0 MiB or more"),
                                             ({"workers": -2}, "0 or more")])
def test_bad_streaming_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Streaming(**kwargs)


def test_the_cli_refuses_a_negative_threshold_in_one_line(scenario, tmp_path, capsys):
    code = main(["eval", "--model", "testbed-tiny-does-not-matter", "--scenario", str(scenario), "--stream-above", "-1"])
    err = capsys.readouterr().err
    assert code != 0 and "streaming threshold" in err and "Traceback" not in err


_HEAP_PROBE = """
import sys, torch
from clipforget.data.loading import map_large_allocations
def anon_mib():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('RssAnon')) / 1024
if sys.argv[1] == 'mapped':
    assert map_large_allocations()
big = torch.ones(20 * 2**18)
del big  # a 20 MiB chunk freed: glibc raises its mmap threshold past 10 MiB
base, pinned = anon_mib(), []
for _ in range(8):
    batch = torch.ones(10 * 2**18)  # a 10 MiB batch, freed, with a small live tensor allocated above it
    pinned.append(torch.ones(1000))
    del batch
print(anon_mib() - base)
"""


def _glibc() -> bool:
    try:
        return "glibc" in os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, TypeError):
        return False


@pytest.mark.skipif(not (_glibc() and Path("/proc/self/status").exists()), reason="the setting is glibc's, on Linux")
def test_streamed_batches_are_returned_to_the_system_when_freed():
    """Without the fixed mmap threshold, freed batches stay in a fragmented heap; with it, none do."""
    def growth(mode: str) -> float:
        done = subprocess.run([sys.executable, "-c", _HEAP_PROBE, mode], capture_output=True, text=True, check=True)
        return float(done.stdout.split()[-1])

    assert growth("default") >= 5  # at least one freed 10 MiB batch stays resident: what the setting exists for
    assert growth("mapped") < 2


def test_a_streamed_set_sets_the_allocator_when_read_and_only_once(fruit, model):
    from clipforget.data.loading import map_large_allocations

    map_large_allocations.cache_clear()
    records, sources = fruit
    first, second = StreamedImages(records, sources, model.preprocess), StreamedImages(records[:3], sources, model.preprocess)
    first.decoded_bytes()  # sized for streaming, not read: a set kept in memory after this leaves glibc alone
    assert map_large_allocations.cache_info().misses == 0
    next(first.batches(4))
    second[[0, 1]]
    info = map_large_allocations.cache_info()
    assert (info.misses, info.hits) == (1, 1)
