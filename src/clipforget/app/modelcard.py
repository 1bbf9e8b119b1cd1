"""The model card (``model/README.md``, Hugging Face conventions) of a run's unlearned model.

Written from the run directory's JSON files: the base model, what was forgotten and how, the
metrics and audit figures, the clipforget version and config, and code that loads the folder with
the backend's own library alone (no clipforget).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from clipforget.app.runfiles import RunFiles, config_diff, run_warnings
from clipforget.audit import audit_summary
from clipforget.io import atomic_write_text

LOADERS = {
    "open_clip": '''import open_clip, torch

DIR = {dir!r}  # this folder
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + DIR)
tokenizer = open_clip.get_tokenizer("local-dir:" + DIR)
model.eval()


@torch.no_grad()
def encode_image(images):  # images: preprocess(PIL image) stacked, (B, 3, H, W)
    return torch.nn.functional.normalize(model.encode_image(images), dim=-1)


@torch.no_grad()
def encode_text(texts):
    return torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=-1)''',
    "transformers": '''import torch
from transformers import AutoProcessor, CLIPModel

DIR = {dir!r}  # this folder
model = CLIPModel.from_pretrained(DIR).eval()
processor = AutoProcessor.from_pretrained(DIR)  # processor(images=[PIL images]) gives pixel_values


@torch.no_grad()
def encode_image(pixel_values):
    pooled = model.vision_model(pixel_values=pixel_values).pooler_output
    return torch.nn.functional.normalize(model.visual_projection(pooled), dim=-1)


@torch.no_grad()
def encode_text(texts):
    tokens = processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    pooled = model.text_model(**tokens).pooler_output
    return torch.nn.functional.normalize(model.text_projection(pooled), dim=-1)''',
    "testbed": '''import json, timm, torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

DIR = {dir!r}  # this folder
F = torch.nn.functional
cfg = json.load(open(f"{{DIR}}/testbed.json"))
image_tower = timm.create_model(cfg["image_arch"], pretrained=False, num_classes=0).eval()
image_tower.load_state_dict(load_file(f"{{DIR}}/image_tower.safetensors"))
tok = AutoTokenizer.from_pretrained(f"{{DIR}}/text_tower", local_files_only=True)
text_tower = AutoModel.from_pretrained(f"{{DIR}}/text_tower", local_files_only=True).eval()
h = load_file(f"{{DIR}}/heads.safetensors")


@torch.no_grad()
def encode_image(x):  # (B, 3, S, S): RGB in [0, 1], short side resized (bicubic) to cfg["image_size"], centre-cropped
    x = (x - torch.tensor(cfg["image_mean"])[:, None, None]) / torch.tensor(cfg["image_std"])[:, None, None]
    return F.normalize(image_tower(x) @ h["image_head.weight"].T + h["image_head.bias"], dim=-1)


@torch.no_grad()
def encode_text(texts):
    t = tok(texts, padding=True, truncation=True, max_length=cfg["max_text_tokens"], return_tensors="pt")
    m = t["attention_mask"].unsqueeze(-1).float()
    pooled = (text_tower(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).last_hidden_state * m).sum(1) / m.sum(1)
    return F.normalize(pooled @ h["text_head.weight"].T + h["text_head.bias"], dim=-1)''',
}


def folder_library(model_dir: Path) -> str | None:
    """Which library loads a saved model folder (a key of :data:`LOADERS`), from the files it holds."""
    if (model_dir / "testbed.json").is_file():
        return "testbed"
    if (model_dir / "open_clip_config.json").is_file():
        return "open_clip"
    if (model_dir / "config.json").is_file():
        return "transformers"
    return None


def loader_code(model_dir: Path) -> str | None:
    """Python that loads ``model_dir`` with its own library and defines ``encode_image`` and ``encode_text``."""
    library = folder_library(model_dir)
    return LOADERS[library].format(dir=str(model_dir.resolve())) if library else None


def _front_matter(run: RunFiles, library: str | None) -> str:
    model_id = str(run.config.get("model", ""))
    meta: dict[str, Any] = {"tags": ["clip", "machine-unlearning", "clipforget"],
                            "pipeline_tag": "zero-shot-image-classification"}
    if library in ("open_clip", "transformers"):
        meta["library_name"] = library
    if model_id.startswith("hf:") and not Path(model_id[3:]).exists() and model_id.count("/") == 1:
        meta["base_model"] = model_id[3:].split("@")[0]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _metrics(run: RunFiles) -> list[str]:
    m = run.metrics
    cols = [("Target ↓", "target"), ("Retain ↑", "retain"), *((h, h) for h in m["original"]["heldout"])]

    def value(side: str, key: str) -> float:
        return m[side][key] if key in ("target", "retain") else m[side]["heldout"][key]

    head = "| model | " + " | ".join(c for c, _ in cols) + " | Score ↑ |"
    rows = []
    for side in ("original", "unlearned"):
        score = f"{m['score']:.1f}" if side == "unlearned" else "–"
        rows.append(f"| {side} | " + " | ".join(f"{value(side, k):.1f}" for _, k in cols) + f" | {score} |")
    return [head, "|" + "---|" * (len(cols) + 2), *rows]


def _audit(run: RunFiles) -> list[str]:
    if not run.audit:
        return ["Not audited (the run had `--no-audit`)."]
    s, verdict = audit_summary(run.audit), run.audit["verdict"]
    out = ["| figure | original | unlearned |", "|---|---|---|"]
    if "target_worst" in s:
        out.append(f"| Target, worst prompt over the label, its aliases and templates (%) | {s['target_worst']['original']:.1f} | "
                   f"{s['target_worst']['unlearned']:.1f} |")
    if "search_share" in s:
        out.append(f"| subgroup share of text-to-image search, worst query (%; chance {s['search_chance']:.1f}) | "
                   f"{s['search_share']['original']:.1f} | {s['search_share']['unlearned']:.1f} |")
    if "relearn" in s:
        r = s["relearn"]
        before = f"{r['original']:.1f}" if "original" in r else "–"
        out.append(f"| Target after {s['relearn_steps']} relearning steps ({s['relearn_setting']}) (%) | {before} | "
                   f"{r['unlearned']:.1f} |")
    flags = ", ".join(f"{k}: {'–' if v is None else ('yes' if v else 'no')}" for k, v in verdict["flags"].items())
    return out + ["", f"Flags ({verdict['kind']}): {flags}."]


def _ledger(model_dir: Path) -> list[str]:
    """The requests of the folder's ledger (``clipforget_ledger.json``), one line each, oldest first."""
    from clipforget.app.ledger import LEDGER_FILE

    path = model_dir / LEDGER_FILE
    if not path.is_file():
        return []
    requests = json.loads(path.read_text()).get("requests", [])
    out = ["## Requests applied to these weights", "",
           f"From `{LEDGER_FILE}` (checked against the weights when a further request loads them):", ""]
    for i, r in enumerate(requests, 1):
        m = r.get("metrics", {})
        out.append(f"{i}. `{r.get('scenario')}` with `{r.get('method')}` on `{r.get('model')}`: Target "
                   f"{m.get('original', {}).get('target', float('nan')):.1f} -> {m.get('unlearned', {}).get('target', float('nan')):.1f}")
    return out + [""]


def model_card(run_dir: str | Path) -> str:
    """The Markdown text of the model card of ``run_dir/model``."""
    run = RunFiles.load(run_dir)
    model_dir = run.dir / "model"
    library = folder_library(model_dir)
    c, info = run.config, run.info
    forget = run.forget
    subgroup = forget.get("subgroup") or "?"
    method, seed = c.get("method", info.get("method", "?")), c.get("seed", info.get("seed", "?"))
    out = [_front_matter(run, library), f"# {c.get('model', '?')} with \"{subgroup}\" forgotten", "",
           f"An unlearned copy of `{c.get('model', '?')}`, made by clipforget "
           f"{info.get('versions', {}).get('clipforget', '?')} (commit `{info.get('git_commit')}`): it should no longer "
           f"recognise the subgroup **{subgroup}** as **{forget.get('label', '?')}**, and keep everything else.", "",
           "## What was forgotten, and how", "",
           f"- scenario: `{info.get('scenario', c.get('scenario'))}`; subgroup: {subgroup}; its label: {forget.get('label', '?')}; "
           f"forget text: \"{forget.get('text', '?')}\"; aliases (scored by the audit only): {', '.join(forget.get('aliases', [])) or '–'}",
           f"- method: `{method}`, seed {seed}, image stages frozen before `{c.get('image_prefix')}`"]
    if run.sets:
        sizes = ", ".join(f"{k} {v['count']}" for k, v in run.sets["sets"].items())
        out.append(f"- images: {sizes}")
    if run.fisher:
        out.append(f"- tuned layers ({len(run.fisher['selected'])}, by relative Fisher information): "
                   + ", ".join(f"`{n}`" for n in run.fisher["selected"]))
    if run.alpha and run.alpha.get("chosen") is not None:
        out.append(f"- souping: α = {run.alpha['chosen']} between the original (0) and the unlearned weights (1)")
    diff = config_diff(method, c.get("method_config", {})) or []
    out.append("- config: the method's defaults" if not diff else
               "- config, where it differs from the defaults: " + "; ".join(f"`{k}` = {a!r} (default {b!r})" for k, a, b in diff))
    out += ["", "## Zero-shot top-1 accuracy (%)", "", *_metrics(run), "",
            "Target: test images of the subgroup, scored over the scenario's classes; Retain: its siblings; the other "
            "columns are held-out sets no method saw. Score = 100/(1+K)·[max(0, 1−T/T₀) + Σ min(1, A/A₀)].", "",
            "## Audit: can the subgroup still be found?", "", *_audit(run), "", *_ledger(model_dir)]
    warnings = run_warnings(run)
    if warnings:
        out += ["## Warnings", "", *(f"- {w}" for w in warnings), ""]
    code = loader_code(model_dir)
    out += ["## Loading it without clipforget", ""]
    out += ["```python", code, "```", ""] if code else ["The folder's layout is not one this clipforget knows.", ""]
    out += [f"With clipforget: `clipforget eval --model {info.get('unlearned_model')} --scenario SCENARIO`.", "",
            "## Reproducing it", "", "```sh",
            f"clipforget forget --model {c.get('model')} --scenario {info.get('scenario')} --method {method} "
            f"--seed {seed} --config method.yaml --out RUN_DIR", "```", "",
            "with `method.yaml`:", "", "```yaml", yaml.safe_dump(c.get("method_config", {}), sort_keys=False).rstrip(), "```", "",
            "## Limitations", "",
            "Forgetting is measured on the scenario's images and prompts; the audit tests other names, search, the image "
            "embeddings, relearning and membership, and each of its figures says what it cannot see. A subgroup forgotten "
            "under these tests may still be found by a test not run. The original model's license applies.", ""]
    return "\n".join(out)


def write_model_card(run_dir: str | Path) -> Path | None:
    """``run_dir/model/README.md``; None when the run saved no model."""
    model_dir = Path(run_dir) / "model"
    if not model_dir.is_dir():
        return None
    return atomic_write_text(model_dir / "README.md", model_card(run_dir))
