"""Throughput at real model sizes, fp32 against bf16, and one run end to end: the GPU check of issue 16 §5.

    python scripts/gpu_check.py --device cuda --out OUT        # a few minutes on one GPU
    python scripts/gpu_check.py --device cpu --quick --out OUT # the same code at toy sizes, to check it runs

1. images/s of the image tower, forward (no gradient) and forward + backward, for random-initialised
   open_clip ``ViT-B-32``, ``ViT-L-14`` and ``RN50`` at 224 px, under fp32 and under bf16 autocast
   (clipforget's ``precision.autocast``, weights in fp32), through clipforget's model protocol;
2. a whole ``run_forget`` (``ours``, the audit on) of ``ViT-B-32`` on a synthetic scenario of 224 px
   files with a 2560-image held-out set, once kept in memory and once streamed, at fp32 and bf16, with
   its time per stage (``--quick``: one fp32 run, streamed, no audit).

Every figure of a row is measured in the same process; ratios (bf16 / fp32) are the figures to quote.
Writes ``OUT/gpu_check.md`` and ``OUT/gpu_check.json``. open_clip must be importable (on a machine
without it, carry its wheel: docs/decisions.md says how).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

ARCHS = ("ViT-B-32", "ViT-L-14", "RN50")


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` after two warm-ups, synchronising the device around each call."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def throughput(arch: str, device: torch.device, batch: int, size: int, repeats: int) -> dict:
    from clipforget.models import load_model
    from clipforget.precision import autocast

    model = load_model(f"openclip:{arch}", device=str(device))
    images = torch.randn(batch, 3, size, size, device=device)
    row: dict = {"arch": arch, "batch": batch, "image_size": size,
                 "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6}
    for precision in ("fp32", "bf16"):
        def forward() -> None:
            with torch.no_grad(), autocast(precision, device):
                model.encode_image(images)

        def backward() -> None:
            model.zero_grad(set_to_none=True)
            with autocast(precision, device):
                loss = model.encode_image(images).float().pow(2).sum()
            loss.backward()

        model.eval()
        row[f"forward_{precision}"] = batch / timed(forward, device, repeats)
        model.train()
        row[f"forward_backward_{precision}"] = batch / timed(backward, device, repeats)
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return row


def end_to_end(device: torch.device, n_held: int, arch: str, quick: bool = False) -> list[dict]:
    """fp32 and bf16, the held-out set kept and streamed, the audit on; ``quick``: one fp32 streamed run, no audit."""
    from bench_memory import write_memory_scenario

    from clipforget.data import Streaming
    from clipforget.app.runner import run_forget

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scenario = write_memory_scenario(Path(tmp), n_held)
        settings = [(p, name, s) for p in ("fp32", "bf16")
                    for name, s in (("kept", Streaming(above_mib=1e9)), ("streamed", Streaming(above_mib=0)))]
        for precision, name, streaming in settings[1:2] if quick else settings:
                out = Path(tmp) / f"run-{precision}-{name}"
                start = time.perf_counter()
                result = run_forget(f"openclip:{arch}", scenario, out, device=str(device), precision=precision,
                                    streaming=streaming, audit=not quick)
                wall = time.perf_counter() - start
                timings = json.loads((out / "run.json").read_text())["timings"]
                rows.append({"precision": precision, "heldout": name, "wall_s": wall, "score": result.score,
                             "target": result.unlearned.target, "stages": timings})
    return rows


def markdown(device: str, rows: list[dict], runs: list[dict]) -> str:
    lines = [f"Device: {device}", "",
             "| model | params (M) | batch | forward fp32 (img/s) | forward bf16 | bf16 / fp32 | fwd+bwd fp32 | fwd+bwd bf16 | bf16 / fp32 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['parameters_m']:.0f} | {r['batch']} | {r['forward_fp32']:.0f} | {r['forward_bf16']:.0f} | "
                     f"{r['forward_bf16'] / r['forward_fp32']:.2f} | {r['forward_backward_fp32']:.0f} | "
                     f"{r['forward_backward_bf16']:.0f} | {r['forward_backward_bf16'] / r['forward_backward_fp32']:.2f} |")
    if runs:
        lines += ["", "| run | held-out set | wall (s) | Target | Score | stages (s) |", "|---|---|---|---|---|---|"]
        for r in runs:
            stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages"].items() if v >= 0.05)
            lines.append(f"| {r['precision']} | {r['heldout']} | {r['wall_s']:.1f} | {r['target']:.1f} | {r['score']:.1f} | {stages} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true",
                   help="toy sizes (ViT-B-32 alone, batch 1, one timing, one fp32 run on a 64-image held-out set, "
                        "no audit): "
                        "checks the script")
    p.add_argument("--skip-run", action="store_true", help="leave out the end-to-end runs")
    p.add_argument("--archs", nargs="+", help=f"open_clip architectures to time (default: {' '.join(ARCHS)}; "
                                              "with --quick: ViT-B-32)")
    p.add_argument("--image-size", type=int, default=224, help="the side of the timed images (the architectures' own)")
    p.add_argument("--run-arch", default="ViT-B-32", help="the open_clip architecture of the end-to-end runs")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu --quick to check the script")
    batch, size, repeats = (1, args.image_size, 1) if args.quick else (256, args.image_size, 5)
    rows = []
    for arch in args.archs or (("ViT-B-32",) if args.quick else ARCHS):
        rows.append(throughput(arch, device, batch, size, repeats))
        print(json.dumps(rows[-1]), flush=True)
    runs = [] if args.skip_run else end_to_end(device, 64 if args.quick else 2560, args.run_arch, quick=args.quick)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps({"device": name, "throughput": rows, "runs": runs}, indent=1))
    (out / "gpu_check.md").write_text(markdown(name, rows, runs))
    print(markdown(name, rows, runs))


if __name__ == "__main__":
    main()
