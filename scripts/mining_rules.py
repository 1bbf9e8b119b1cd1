"""Compare forget-set rules of ``clipforget mine`` on a labelled pool: precision and recall of each rule against
the pool's labels, from one embedding of the pool under the testbed (cached beside the pool).

    python scripts/mining_rules.py POOL.csv --label L --query Q --alias A [--alias B ...] --truth T --classnames C1 C2 ...

e.g. the springer pool (``scripts/springer_pool.py``): ``--label dog --query "photos of English springer spaniels"
--alias "English springer" --alias "English springer spaniel" --alias "springer spaniel" --truth "English springer"
--classnames airplane automobile bird cat deer dog frog horse ship truck``; the Fashion-MNIST pool
(``scripts/sneaker_pool.py``): ``--label sneaker --query "photos of sneakers" --alias sneakers --alias "running shoe"
--alias "athletic shoe" --alias trainer --truth sneaker --classnames t-shirt trouser pullover dress coat sandal shirt
sneaker bag "ankle boot"``. *vocab* is the contrast vocabulary of the default rule: the 1000 ImageNet names less
the aliases and the classes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from clipforget.data import presets
from clipforget.app.mined_scenario import DEFAULT_TEMPLATES, embed_pool, read_pool
from clipforget.mining import MARGIN_EPS
from clipforget.models import load_model
from clipforget.zeroshot import build_zero_shot_classifier


def embeddings(pool_csv: Path, classnames, query: str, aliases, cache: Path) -> dict:
    if cache.exists():
        return torch.load(cache)
    model = load_model("testbed").eval()
    with torch.no_grad():
        low = {a.lower() for a in aliases} | {c.lower() for c in classnames}
        vocab = [n for n in presets.imagenet_classnames() if n.lower() not in low]
        d = {"img": embed_pool(model, read_pool(pool_csv)),
             "cls": build_zero_shot_classifier(model, classnames, DEFAULT_TEMPLATES).float().cpu().T,
             "query": model.encode_text(model.tokenize([query])).float().cpu(),
             "aliases": build_zero_shot_classifier(model, list(aliases), DEFAULT_TEMPLATES).float().cpu().T,
             "vocab": build_zero_shot_classifier(model, vocab, DEFAULT_TEMPLATES).float().cpu().T}
    torch.save(d, cache)
    return d


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pool", type=Path)
    p.add_argument("--label", required=True)
    p.add_argument("--query", required=True)
    p.add_argument("--alias", action="append", default=[])
    p.add_argument("--truth", required=True)
    p.add_argument("--classnames", nargs="+", required=True)
    args = p.parse_args()
    d = embeddings(args.pool, args.classnames, args.query, args.alias, args.pool.with_suffix(".rules-emb.pt"))
    pool = read_pool(args.pool)
    truth = torch.tensor([args.truth in (i.pool_class, i.pool_subgroup) for i in pool])
    img = d["img"]
    sims, vocab = img @ d["cls"].T, img @ d["vocab"].T
    label = args.classnames.index(args.label)
    pred = sims.argmax(1)
    others = torch.cat([sims[:, :label], sims[:, label + 1:]], 1).max(1).values
    print("| rule | mined | precision | recall |\n|---|---|---|---|")

    def report(name: str, sel: torch.Tensor) -> None:
        hit, n = int((sel & truth).sum()), int(sel.sum())
        print(f"| {name} | {n} | {100 * hit / max(n, 1):.1f} | {100 * hit / int(truth.sum()):.1f} |")

    for texts, q_emb in (("query text only", d["query"]), ("query text + aliases", torch.cat([d["query"], d["aliases"]]))):
        q = (img @ q_emb.T).max(1).values
        rank = (vocab > q[:, None]).sum(1)
        report(f"{texts}: nearest over the label space", q - sims.max(1).values > MARGIN_EPS)
        report(f"{texts}: nearest over the label space, and classified as the label",
               (q - sims.max(1).values > MARGIN_EPS) & (pred == label))
        report(f"{texts}: nearest over the label space + vocab (the default with aliases)",
               q - torch.maximum(sims.max(1).values, vocab.max(1).values) > MARGIN_EPS)
        report(f"{texts}: nearest over the other classes + vocab (the label no rival)",
               q - torch.maximum(others, vocab.max(1).values) > MARGIN_EPS)
        for k in (3, 20):
            report(f"{texts}: within the top {k} of vocab, beating the label space", (rank < k) & (q > sims.max(1).values))
            report(f"{texts}: within the top {k} of vocab, classified as the label", (rank < k) & (pred == label))
    report("classified as the label (`forget_rule: label`)", pred == label)


if __name__ == "__main__":
    main()
