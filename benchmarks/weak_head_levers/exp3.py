import sys, time, re, json
sys.argv, args = sys.argv[:1], sys.argv[1:]
from exp import *
body = [n for n in names if n not in head]
groups = {}
for L in range(6):
    groups[f"L{L}"] = [n for n in body if f"layer.{L}." in n]
for kind, pat in (("qkv", r"attention\.self\."), ("attnout", r"attention\.output\.dense"), ("ffnin", r"intermediate\.dense"), ("ffnout", r"layer\.\d+\.output\.dense")):
    groups[kind] = [n for n in body if re.search(pat, n)]
for L in range(6):
    groups[f"ffnout{L}"] = [n for n in body if f"layer.{L}.output.dense" in n]
out = {}
for tag in args:
    g = groups[tag]
    t = time.time()
    m = quantize_ov(src, W / f"ov-{tag}", OvInt8Config(ignored_nodes=head + tuple(g)), calib)
    print(tag, len(g), "built", round(time.time() - t), flush=True)
    out[tag] = evaluate(tag, pred(m.path))
    json.dump(out, open(W / f"abl-{'_'.join(args)}.json", "w"))
