"""Compare forget-set rules of clipforget mine on the springer pool (scripts/springer_pool.py): precision and
recall of each rule against the pool labels, from one embedding of the pool (cached under runs/mine/).

    python scripts/mining_rules.py    # after: python scripts/springer_pool.py runs/mine/springer-pool.csv
"""
import torch, sys
from pathlib import Path
from clipforget.models import load_model
from clipforget.mined_scenario import read_pool, embed_pool, DEFAULT_TEMPLATES
from clipforget.zeroshot import build_zero_shot_classifier
cache = Path("runs/mine/emb.pt")
m = load_model("testbed").eval()
pool = read_pool("runs/mine/springer-pool.csv")
names = "airplane automobile bird cat deer dog frog horse ship truck".split()
aliases = ["English springer", "English springer spaniel", "springer spaniel"]
if cache.exists():
    d = torch.load(cache)
else:
    with torch.no_grad():
        img = embed_pool(m, pool)
        cls = build_zero_shot_classifier(m, names, DEFAULT_TEMPLATES).float().cpu().T
        q = m.encode_text(m.tokenize(["photos of English springer spaniels"])).float().cpu()
        al = build_zero_shot_classifier(m, aliases, DEFAULT_TEMPLATES).float().cpu().T
    d = {"img": img, "cls": cls, "q": q, "al": al}
    torch.save(d, cache)
truth = torch.tensor([p.pool_subgroup == "English springer" for p in pool])
img, cls = d["img"], d["cls"]
S = img @ cls.T
label = names.index("dog")
pred = S.argmax(1)
def report(name, sel):
    tp = int((sel & truth).sum()); n = int(sel.sum())
    print(f"{name:50s} mined {n:4d} precision {100*tp/max(n,1):5.1f} recall {100*tp/truth.sum():5.1f}")
for qname, Q in [("query only", d["q"]), ("aliases only", d["al"]), ("query+aliases", torch.cat([d["q"], d["al"]]))]:
    q = (img @ Q.T).max(1).values
    margin = q - S.max(1).values
    report(f"{qname}: nearest text", margin > 1e-5)
    report(f"{qname}: nearest text & classified as label", (margin > 1e-5) & (pred == label))
    report(f"{qname}: q > s_label & classified as label", (q > S[:, label]) & (pred == label))
print("classified as dog among springers:", float((pred[truth] == label).float().mean()))
from clipforget.data import presets
vocab = [n for n in presets.imagenet_classnames() if n.lower() not in {a.lower() for a in aliases}]
vc = Path("runs/mine/vocab.pt")
if vc.exists():
    V = torch.load(vc)
else:
    with torch.no_grad():
        V = build_zero_shot_classifier(m, vocab, DEFAULT_TEMPLATES).float().cpu().T
    torch.save(V, vc)
SV = img @ V.T
for qname, Q in [("query only", d["q"]), ("query+aliases", torch.cat([d["q"], d["al"]]))]:
    q = (img @ Q.T).max(1).values
    best = torch.maximum(S.max(1).values, SV.max(1).values)
    report(f"{qname}: nearest over label space+1000 names", q - best > 1e-5)
    for k in (1, 3, 5, 10):
        rank = (SV > q[:, None]).sum(1)
        report(f"{qname}: query within top {k} of 1000 names, beats label space", (rank < k) & (q > S.max(1).values))
