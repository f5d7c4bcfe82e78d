import json, sys, onnx, numpy as np
g = onnx.load("/tmp/wh/work5/tuner/smooth-0.8/model.onnx", load_external_data=False).graph
inits = {i.name: i for i in g.initializer}
s = json.load(open("/tmp/wh/work5/ort-sens.json"))
cost = {}
for n in g.node:
    name = n.name
    if name in s["output_nmse"] or f"{name}_MatMul" in s["output_nmse"]:
        key = name if name in s["output_nmse"] else f"{name}_MatMul"
        w = inits.get(n.input[1]) if len(n.input) > 1 else None
        cost[key] = int(np.prod(w.dims)) if (w is not None and n.op_type in ("MatMul", "Gemm", "Attention")) else 0
print(len(cost), len(s["output_nmse"]))
floor = 0.01 * max(cost.values())
fl = s["flip_rate"]
for label, key in (("flip", lambda n: -fl[n]), ("flip/cost", lambda n: -fl[n] / max(cost[n], floor)), ("flip2/cost", lambda n: -fl[n] ** 2 / max(cost[n], floor))):
    order = sorted(cost, key=key)
    print(label, [(o.split("/")[-3] + "/" + o.split("/")[-2] if "/" in o else o, cost[o], round(fl[o], 4)) for o in order[:10]])
json.dump({"cost": cost}, open("/tmp/wh/work5/costs.json", "w"))
