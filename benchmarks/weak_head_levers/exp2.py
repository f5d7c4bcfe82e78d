import sys, time
sys.argv, args = sys.argv[:1], sys.argv[1:]
from exp import *
import openvino as ov, nncf
core = ov.Core()
A = core.read_model(str(W / "ov-A/model.xml"))
tag = args[0]
if tag == "hybrid":
    # static int8 everywhere but head + FFN-outs (ignored), then FFN-outs int8 weights + per-token dynamic act. quant.
    m = core.read_model(str(W / "ov-B/model.xml"))
    keep = [n for n in node_names(m) if n not in ffn]
    t = time.time()
    with nncf_quiet() if False else open(os.devnull) as _:
        c = nncf.compress_weights(m, mode=nncf.CompressWeightsMode.INT8_SYM, ignored_scope=nncf.IgnoredScope(names=keep, validate=False))
    for g in args[1:] or ["32"]:
        c.set_rt_info(g, ["runtime_options", "DYNAMIC_QUANTIZATION_GROUP_SIZE"])
        ov.save_model(c, str(W / f"ov-hybrid{g}/model.xml"), compress_to_fp16=False)
        print("built", time.time() - t)
        evaluate(f"hybrid g{g}", pred(W / f"ov-hybrid{g}/model.xml"))
