import sys, time, json
sys.argv, args = sys.argv[:1], sys.argv[1:]
from exp import *
from multiverse.validate import model_inputs
valfeeds = [fp.encode([x]).arrays for x in model_inputs(val)]
testfeeds = None
out = {}
for tag in args:
    if tag == "B-valcal":
        cfg, cal = OvInt8Config(ignored_nodes=head + ffn), valfeeds
    elif tag == "A-valcal":
        cfg, cal = OvInt8Config(ignored_nodes=head), valfeeds
    elif tag == "B-fullbc":
        cfg, cal = OvInt8Config(ignored_nodes=head + ffn, fast_bias_correction=False), calib
    elif tag == "A-fullbc":
        cfg, cal = OvInt8Config(ignored_nodes=head, fast_bias_correction=False), calib
    elif tag.startswith("B-range-"):
        cfg, cal = OvInt8Config(ignored_nodes=head + ffn, activations_range=tag[8:]), calib
    elif tag.startswith("A-range-"):
        cfg, cal = OvInt8Config(ignored_nodes=head, activations_range=tag[8:]), calib
    t = time.time()
    m = quantize_ov(src, W / f"ov-{tag}", cfg, cal)
    print(tag, "built", round(time.time() - t), flush=True)
    out[tag] = evaluate(tag, pred(m.path))
