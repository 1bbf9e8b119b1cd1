"""report.html, the warnings, the model card: generated from a real tiny run, checked against its JSON files."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import stat
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import torch
from synthetic import build_tiny_scenario

from clipforget.app.modelcard import loader_code
from clipforget.app.report import write_report
from clipforget.app.runfiles import RunFiles, run_warnings
from clipforget.app.runner import run_forget
from clipforget.audit import AuditConfig
from clipforget.methods import get_method
from clipforget.models import load_model

SMOKE = get_method("ours-paper").smoke_config()  # every stage runs: select, forget, remind, restore
AUDIT = AuditConfig(templates=("a photo of a {}.",), relearn_steps=(1,))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One finished tiny run (open_clip ResNet), written under umask 027."""
    from tiny import register_tiny_openclip

    root = tmp_path_factory.mktemp("run")
    scenario = build_tiny_scenario(root)
    register_tiny_openclip(root)
    torch.manual_seed(0)
    load_model("openclip:tiny-RN").save(root / "ckpt")
    old = os.umask(0o027)
    try:
        run_forget(f"openclip:local-dir:{root / 'ckpt'}", scenario, root / "run", config=SMOKE, audit=AUDIT)
    finally:
        os.umask(old)
    return root / "run"


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def test_every_file_of_a_run_is_readable_by_the_group(run_dir):
    for p in [run_dir, *run_dir.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o040, f"{p.relative_to(run_dir)} has mode {oct(mode)}"
        assert not mode & 0o007, f"{p.relative_to(run_dir)}: the umask 027 gives others nothing"


def test_the_page_is_self_contained(run_dir):
    page = (run_dir / "report.html").read_text()
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in page and "http://" not in page and "https://" not in page


def test_the_figures_in_the_page_are_those_of_metrics_json(run_dir):
    page = html.unescape((run_dir / "report.html").read_text())
    m = json.loads((run_dir / "metrics.json").read_text())
    cells = re.findall(r"<td class=n>([^<]*)</td>", page)
    for side in ("original", "unlearned"):
        for value in [m[side]["target"], m[side]["retain"], *m[side]["heldout"].values()]:
            assert f"{value:.1f}" in cells
    assert f"{m['score']:.1f}" in cells
    # the confusion row counts the unlearned model's Target predictions
    sets = json.loads((run_dir / "sets.json").read_text())
    names = sets["sets"]["target"]["classnames"]
    counts = Counter(m["unlearned"]["details"]["target"]["predicted"])
    table = page.split('id=confusion')[1].split("</table>")[0]
    for i, n in counts.items():
        assert re.search(rf"<td>{re.escape(names[i])}[^<]*</td><td class=n>\d+</td><td class=n>{n}</td>", table)
    assert len(m["unlearned"]["details"]["target"]["predicted"]) == sets["sets"]["target"]["count"]


def test_the_example_cards_show_each_models_prediction(run_dir):
    page = html.unescape((run_dir / "report.html").read_text())
    sets = json.loads((run_dir / "sets.json").read_text())
    m = json.loads((run_dir / "metrics.json").read_text())
    ex = sets["sets"]["target"]["examples"][0]
    before = sets["sets"]["target"]["classnames"][m["original"]["details"]["target"]["predicted"][ex["index"]]]
    examples = page.split("id=examples")[1].split("id=stages")[0]
    assert f"before: <span class=\"{'ok' if before == ex['label'] else 'bad'}\">{before}" in examples
    assert examples.count('<div class="card">') == sum(len(s["examples"]) for s in sets["sets"].values())
    assert all((run_dir / e["image"]).is_file() for s in sets["sets"].values() for e in s["examples"])


def _edit(path: Path, change) -> None:
    lines = [json.loads(x) for x in path.read_text().splitlines()] if path.suffix == ".jsonl" else json.loads(path.read_text())
    change(lines)
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n" if path.suffix == ".jsonl" else json.dumps(lines))


def _clean(run: Path) -> None:
    """Edit a run's files into one with nothing suspect."""
    def events(evs):
        for ev in evs:
            if ev["stage"] == "forget":
                ev["stopped_early"] = True
            if ev["stage"] == "restore":
                ev["choice"] = {"alpha": 0.5, "forget_acc": 0.0, "utility": 0.5}

    def metrics(m):
        m["original"]["target"], m["unlearned"]["target"] = 80.0, 5.0
        m["weights_changed"], m["warnings"] = True, []

    def audit(a):
        a["verdict"]["every_road_closed"] = True

    _edit(run / "events.jsonl", events)
    _edit(run / "metrics.json", metrics)
    _edit(run / "audit.json", audit)


@pytest.mark.parametrize("spoil, expected", [
    (None, None),
    (("metrics.json", lambda m: m["unlearned"].update(target=m["original"]["target"])), "The Target did not fall"),
    (("events.jsonl", lambda evs: [ev.update(choice={"alpha": 0.0, "forget_acc": 0.0, "utility": 0.5})
                                   for ev in evs if ev["stage"] == "restore"]), "chose the original weights"),
    (("events.jsonl", lambda evs: [ev.update(choice={"alpha": 1.0, "forget_acc": 0.4, "utility": 0.5})
                                   for ev in evs if ev["stage"] == "restore"]), "No α on the grid met the forget constraint"),
    (("events.jsonl", lambda evs: [ev.update(stopped_early=False) for ev in evs if ev["stage"] == "forget"]),
     "ran its whole step budget"),
    (("audit.json", lambda a: a["verdict"].update(every_road_closed=False)), "The audit still finds the subgroup"),
    (("metrics.json", lambda m: m.update(weights_changed=False)), "No weight changed"),
])
def test_each_suspect_result_raises_its_own_warning_and_a_clean_one_none(run_dir, tmp_path, spoil, expected):
    run = _copy(run_dir, tmp_path)
    _clean(run)
    if spoil is not None:
        _edit(run / spoil[0], spoil[1])
    warnings = run_warnings(RunFiles.load(run))
    assert warnings == [] if expected is None else (len(warnings) == 1 and expected in warnings[0]), warnings
    write_report(run)
    page = (run / "report.html").read_text()
    assert ('class="banner warn"' in page) == (expected is not None)
    assert (expected is None) or expected in html.unescape(page)
    assert (expected is None) or expected in (run / "report.md").read_text()


def test_a_changed_default_is_shown_against_the_default(run_dir):
    page = html.unescape((run_dir / "report.html").read_text())
    diff = page.split("differs from its defaults")[1].split("</table>")[0]
    assert f"<td>forget.train.steps</td><td>{SMOKE.forget.train.steps}</td><td>{type(SMOKE)().forget.train.steps}</td>" in diff
    assert "<td>use_lora</td>" not in diff, "an unchanged field is not listed"


# -- headless Chromium ----------------------------------------------------------------------------
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || (e.target && e.target.src))), true);
const _error = console.error; console.error = (...a) => { window.__errors.push(a.join(" ")); _error(...a); };
window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.setAttribute("data-probe", JSON.stringify({images: images.length,
    broken: images.filter(i => !i.complete || i.naturalWidth === 0).length, errors: window.__errors}));
});
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")


def render(page: Path, tmp_path: Path) -> dict:
    """Load ``page`` in headless Chromium; returns image count, broken images and script/console errors."""
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    out = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                          "--enable-logging=stderr", "--v=0", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120, check=False)
    found = re.search(r'data-probe="([^"]*)"', out.stdout)
    assert found, f"the page did not finish loading: {out.stderr[-2000:]}"
    result = json.loads(html.unescape(found.group(1)))
    result["console"] = [line for line in out.stderr.splitlines() if "CONSOLE" in line]
    return result


def test_the_run_page_renders_in_chromium_with_every_image_loaded(run_dir, tmp_path):
    result = render(run_dir / "report.html", tmp_path)
    expected = (run_dir / "report.html").read_text().count("<img ")
    assert result["images"] == expected > 5
    assert result["broken"] == 0 and result["errors"] == [] and result["console"] == []


# -- the model card --------------------------------------------------------------------------------
def test_the_model_card_states_the_run(run_dir):
    card = (run_dir / "model" / "README.md").read_text()
    m = json.loads((run_dir / "metrics.json").read_text())
    assert card.startswith("---\n") and "library_name: open_clip" in card.split("---")[1]
    assert "springer" in card and '"a photo of a dog."' in card
    assert f"| unlearned | {m['unlearned']['target']:.1f} |" in card and f"{m['score']:.1f} |" in card
    assert "## Audit" in card and "Target, worst prompt" in card
    assert f"forget.train.steps` = {SMOKE.forget.train.steps}" in card
    assert "clipforget 0.1.0" in card


@torch.no_grad()
def test_the_model_cards_code_loads_the_folder_without_clipforget(tiny_models, tmp_path):
    folder = tmp_path / "model"
    tiny_models.save(folder)
    code = loader_code(folder)
    assert code and "clipforget" not in code
    scope: dict = {}
    exec(compile(code, "model-card", "exec"), scope)  # noqa: S102 - the card's own code, run as a user would
    size = getattr(tiny_models, "image_size", None) or 32
    images = torch.rand(2, 3, size, size)
    images = torch.stack([tiny_models.preprocess(__import__("torchvision").transforms.functional.to_pil_image(x)) for x in images])
    if code.startswith("import json, timm"):  # the testbed's code takes [0, 1] pixels and normalises itself
        pixels = images * torch.tensor(tiny_models.config.image_std)[:, None, None] + torch.tensor(tiny_models.config.image_mean)[:, None, None]
        theirs = scope["encode_image"](pixels)
    else:
        theirs = scope["encode_image"](images)
    ours = torch.nn.functional.normalize(tiny_models.encode_image(images), dim=-1)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
    texts = ["a photo of a dog.", "a cat"]
    ours_t = torch.nn.functional.normalize(tiny_models.encode_text(tiny_models.tokenize(texts)), dim=-1)
    torch.testing.assert_close(scope["encode_text"](texts), ours_t, rtol=1e-4, atol=1e-5)


def test_a_baselines_page_shows_its_scored_candidates_and_the_one_kept(run_dir, tmp_path):
    root = run_dir.parent
    method = get_method("ssd")
    run_forget(f"openclip:local-dir:{root / 'ckpt'}", root / "tiny-springer.yaml", tmp_path / "ssd", method="ssd",
               config=method.smoke_config(), audit=False)
    page = html.unescape((tmp_path / "ssd" / "report.html").read_text())
    event = json.loads((tmp_path / "ssd" / "events.jsonl").read_text().splitlines()[-1])
    assert f"{len(event['curve'])} candidates scored" in page
    assert f"kept: alpha {event['choice']['alpha']:g}" in page
    assert "The run was not audited" in page and "id=stages" in page
