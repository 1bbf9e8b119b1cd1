"""How close clipforget's loops run to their floor: every figure a ratio measured in the same run.

    python scripts/bench_speed.py [--steps 20] [--scenario cifar10-cat] [--skip-run] [--skip-growth] [--skip-memory]

1. the shared training loop's step against a bare PyTorch loop doing the same forward, backward and
   AdamW step on the same batch (an open_clip ViT, 64 px, width 256; aim ≤ 1.10×);
2. zero-shot evaluation throughput (:func:`clipforget.evaluation.image_logits`, its embedding memo
   emptied before each pass so that every image goes through the tower) against a plain open_clip
   loop (encode, normalise, multiply by the classifier) on the same model and images (aim ≥ 0.9×);
3. a full ``ours`` run on a public scenario of the testbed (``run_forget``, no audit) against its floor:
   reading and preprocessing every image once, one image-tower forward per image, the label spaces'
   text classifiers, timed on their own (aim ≤ 1.5×), with the run's time per stage. The run timed is
   the process's second (its memos of classifiers and embeddings emptied first), on the floor's
   footing: modules imported and sources listed, as they are when the floor is timed; the first
   run's time is a row of its own;
4. how a run's time and peak memory grow with |D_f|, |D_r|, the held-out size and the model width
   (open_clip ViTs of a few widths, synthetic images, ``ours`` at its defaults), one process per row;
   memory is the peak RSS above what the process held once the model was loaded (Linux ``VmHWM``);
5. (in scripts/bench_memory.py) the peak memory of a whole ``run_forget`` (``ours``, no audit) as its held-out set grows from 512 to
   5120 image files, and as its retain set grows from 524 to 5132 (224 px, an open_clip ViT of width
   64 at 224 px), every set kept in memory against every set streamed from disk
   (``Streaming(above_mib=0)``), one process per row, with each row's time.

Run it alone: several processes on 2 cores thrash and the ratios of sections 1 and 2 interleave their
two sides to share what noise remains.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

WIDTHS = {64: 2, 128: 4, 256: 4, 384: 6}  # width -> heads


def vit(width: int, tmp: Path, image_size: int = 64):
    """An open_clip ViT of ``width`` (random weights) as a clipforget model."""
    import open_clip

    from clipforget.models import load_model

    name = f"speed-ViT-{width}" + (f"-{image_size}" if image_size != 64 else "")
    if name not in open_clip.list_models():
        cfg = {"embed_dim": width, "vision_cfg": {"image_size": image_size, "layers": 4, "width": width,
                                                  "patch_size": 8 if image_size == 64 else 32,
                                                  "head_width": width // WIDTHS[width]},
               "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": width, "heads": WIDTHS[width], "layers": 2}}
        (tmp / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(tmp / f"{name}.json")
    torch.manual_seed(0)
    return load_model(f"openclip:{name}").eval()


def interleaved(a, b, rounds: int = 4) -> tuple[float, float]:
    """Median seconds of ``a()`` and ``b()``, run alternately ``rounds`` times each after one warm-up."""
    a(), b()
    ta, tb = [], []
    for _ in range(rounds):
        for f, out in ((a, ta), (b, tb)):
            start = time.perf_counter()
            f()
            out.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def training_step(tmp: Path, steps: int) -> str:
    from clipforget.methods.training import TrainConfig, train_loop

    model = vit(256, tmp)
    params = [p for n, p in model.named_weights() if n.startswith("visual.")]
    batch = torch.randn(32, 3, 64, 64)
    text = torch.nn.functional.normalize(torch.randn(256), dim=0)
    config = TrainConfig(steps=steps, lr=1e-5, batch_size=32)

    def loss_fn(step: int) -> dict[str, torch.Tensor]:
        return {"loss": (model.encode_image(batch) @ text).mean()}

    def ours() -> None:
        train_loop(params, loss_fn, config, desc="speed")

    def bare() -> None:
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        for _ in range(steps):
            loss = (model.encode_image(batch) @ text).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    t_ours, t_bare = interleaved(ours, bare)
    return (f"| training step (ViT width 256, batch 32, 64 px) | {1e3 * t_ours / steps:.1f} ms | {1e3 * t_bare / steps:.1f} ms "
            f"(bare PyTorch loop) | {t_ours / t_bare:.3f}× | ≤ 1.10× |")


def evaluation(tmp: Path) -> str:
    from clipforget import zeroshot
    from clipforget.evaluation import LabelledImages, image_logits
    from clipforget.zeroshot import build_zero_shot_classifier

    model = vit(256, tmp)
    images = torch.randn(512, 3, 64, 64)
    names = tuple(f"class {i}" for i in range(10))
    data = LabelledImages(images, torch.arange(512) % 10, names, ("a photo of a {}.",))
    classifier = build_zero_shot_classifier(model, names, data.templates)
    clip = model.model

    def ours() -> None:  # every image through the tower: the embedding memo would answer repeats from memory
        zeroshot._EMB_MEMO.clear()
        image_logits(model, data, batch_size=64, classifier=classifier)

    @torch.no_grad()
    def plain() -> None:  # open_clip's own zero-shot loop
        for x in images.split(64):
            f = clip.encode_image(x)
            f = f / f.norm(dim=-1, keepdim=True)
            _ = f @ classifier

    t_ours, t_plain = interleaved(ours, plain)
    return (f"| zero-shot evaluation (512 images, ViT width 256) | {512 / t_ours:.0f} images/s | {512 / t_plain:.0f} images/s "
            f"(plain open_clip loop) | {t_plain / t_ours:.3f}× throughput | ≥ 0.9× |")


def full_run(scenario: str) -> list[str]:
    from clipforget.data import build_scenario, load_scenario_config, open_sources
    from clipforget.models import load_model
    from clipforget.app.prepare import load_scenario_images
    from clipforget.app.runner import run_forget
    from clipforget.zeroshot import build_zero_shot_classifier, compute_image_embeddings

    from clipforget import zeroshot

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run_forget("testbed", scenario, Path(out) / "cold", audit=False)
        cold = time.perf_counter() - start
        zeroshot.clear_memos()  # the second run computes every classifier and embedding again
        start = time.perf_counter()
        run_forget("testbed", scenario, Path(out) / "run", audit=False)
        wall = time.perf_counter() - start
        timings = json.loads((Path(out) / "run" / "run.json").read_text())["timings"]
    start = time.perf_counter()
    model = load_model("testbed").eval()
    config = load_scenario_config(scenario)
    splits = build_scenario(config)
    images = load_scenario_images(splits, open_sources(config), model.preprocess)
    read = time.perf_counter() - start
    sets = [images.forget_train, *(getattr(images, k).images for k in ("retain_train", "calibration", "target", "retain")),
            *(v.images for v in images.heldout.values())]
    start = time.perf_counter()
    for x in sets:
        if len(x):
            compute_image_embeddings(model, x, progress=False)
    forward = time.perf_counter() - start
    start = time.perf_counter()
    for data in (images.target, *images.heldout.values()):
        build_zero_shot_classifier(model, data.classnames, data.templates)
    text = time.perf_counter() - start
    floor = read + forward + text
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items() if v >= 0.05)
    return [f"| full `ours` run on {scenario} (testbed, no audit; the process's second run) | {wall:.1f} s | {floor:.1f} s "
            f"(floor: read + preprocess {read:.1f} s, one image forward each {forward:.1f} s, text classifiers {text:.1f} s) "
            f"| {wall / floor:.2f}× | ≤ 1.5× |",
            f"| ... its stages | {stages} | | | |",
            f"| the same run first in its process (imports, source listings) | {cold:.1f} s | {floor:.1f} s | {cold / floor:.2f}× | |"]


def growth_row(args: list[str]) -> dict:
    """One configuration in a child process (its own peak RSS); ``args`` start with the child's flag."""
    args = args if args[0].startswith("--") else ["--growth-child", *args]
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def growth_child(width: int, n_forget: int, n_retain: int, n_held: int) -> None:
    from clipforget.evaluation import LabelledImages, image_logits
    from clipforget.methods import get_method
    from clipforget.methods.core import UnlearnData

    with tempfile.TemporaryDirectory() as tmp:
        model = vit(width, Path(tmp))
    g = torch.Generator().manual_seed(0)
    names = tuple(f"class {i}" for i in range(10))
    data = UnlearnData(forget_images=torch.randn(n_forget, 3, 64, 64, generator=g), forget_text="a photo of a class 0.",
                       retain_images=torch.randn(n_retain, 3, 64, 64, generator=g), retain_labels=torch.arange(n_retain) % 9 + 1,
                       classnames=names, templates=("a photo of a {}.",), forget_label=0,
                       calibration_images=torch.randn(n_retain, 3, 64, 64, generator=g))
    held = LabelledImages(torch.randn(n_held, 3, 64, 64, generator=g), torch.arange(n_held) % 10, names, ("a photo of a {}.",))
    reset_peak_rss()  # the imports' and the model's own memory are the floor every row shares
    floor = rss_mib("VmRSS")
    start = time.perf_counter()
    method = get_method("ours")
    result = method.run(model, data, method.config_class().with_overrides(["forget.self_names=0"]), seed=0)
    image_logits(result.model, held)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_mib": rss_mib("VmHWM") - floor}))


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak (VmHWM) restarts from the current RSS


def rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def growth() -> list[str]:
    base = {"width": 128, "n_forget": 64, "n_retain": 128, "n_held": 512}
    rows = [("base", base), ("|D_f| × 4", {**base, "n_forget": 256}), ("|D_r| × 4", {**base, "n_retain": 512}),
            ("held-out × 4", {**base, "n_held": 2048}), ("held-out × 10", {**base, "n_held": 5120}),
            ("width × 2", {**base, "width": 256}), ("width × 3", {**base, "width": 384})]
    lines = ["| configuration | width | D_f | D_r | held out | time (s) | time / base | peak RSS above the loaded model (MiB) | RSS / base |",
             "|---|---|---|---|---|---|---|---|---|"]
    first = None
    for name, cfg in rows:
        r = growth_row([str(cfg[k]) for k in ("width", "n_forget", "n_retain", "n_held")])
        first = first or r
        lines.append(f"| {name} | {cfg['width']} | {cfg['n_forget']} | {cfg['n_retain']} | {cfg['n_held']} | {r['seconds']:.2f} | "
                     f"{r['seconds'] / first['seconds']:.2f} | {r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] / first['peak_rss_mib']:.2f} |")
    return lines


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--growth-child":
        growth_child(*(int(a) for a in sys.argv[2:6]))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--scenario", default="cifar10-cat")
    p.add_argument("--skip-run", action="store_true", help="leave out section 3 (the testbed run; needs ../shared data)")
    p.add_argument("--skip-growth", action="store_true")
    p.add_argument("--skip-memory", action="store_true", help="leave out section 5 (memory as the sets grow)")
    p.add_argument("--only-memory", action="store_true", help="section 5 alone")
    args = p.parse_args()
    from bench_memory import heldout_memory, retain_memory  # scripts/ is on the path when this runs as a script

    if args.only_memory:
        print("\n".join(heldout_memory()))
        print()
        print("\n".join(retain_memory()))
        return
    torch.set_num_threads(torch.get_num_threads())
    lines = ["| what | clipforget | baseline in the same run | ratio | aim |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        lines.append(training_step(Path(tmp), args.steps))
        print(lines[-1], flush=True)
        lines.append(evaluation(Path(tmp)))
        print(lines[-1], flush=True)
    if not args.skip_run:
        lines += full_run(args.scenario)
    print("\n".join(lines))
    if not args.skip_growth:
        print()
        print("\n".join(growth()))
    if not args.skip_memory:
        print()
        print("\n".join(heldout_memory()))
        print()
        print("\n".join(retain_memory()))


if __name__ == "__main__":
    main()
