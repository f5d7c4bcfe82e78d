"""What ``peers.py`` measures besides the latency grid, each in a spawned process pinned to the benchmark's cores:

* :func:`fidelity`: every system's outputs against the PyTorch model (``transformers`` pipeline) on the
  built-in texts (``multiverse.evaldata.builtin``), cut to the model's limit: label agreement for classifiers,
  mean / min cosine for embeddings (``multiverse.benchmark.baselines.compare_accuracy``).
* :func:`throughput`: requests per second at one sequence length, one text per request, end to end (tokenize,
  run, post-process): Multiverse as ``multiverse serve`` runs it by default (one ``Predictor`` with ``threads``
  intra-op threads, one client, requests one after another); Multiverse as ``multiverse serve
  --performance-hint throughput`` runs it (the server's own engines, :mod:`multiverse.serve.throughput`, in
  process without HTTP, with ``2 × streams`` concurrent clients on an asyncio loop, as the routes submit);
  and OpenVINO with ``PERFORMANCE_HINT: THROUGHPUT`` (its streams, an ``AsyncInferQueue`` of
  ``OPTIMAL_NUMBER_OF_INFER_REQUESTS``). The configurations are timed in interleaved rounds.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import time
from pathlib import Path

_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def _pin(cpus: list[int], threads: int) -> None:
    """Pin the worker to ``cpus`` and cap OpenMP/MKL pools before torch/onnxruntime/openvino load."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))
    for var in _THREAD_ENV:
        os.environ[var] = str(threads)


def run_pinned(fn, cores: int, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a fresh spawned process pinned to ``cores`` physical cores; its return value."""
    from multiverse.benchmark.grid import pick_cpus

    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_pin,
                                initargs=(pick_cpus(cores), cores)) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def builtin_inputs(bundle: str | Path, limit: int | None = None) -> list:
    """The built-in eval inputs of the bundle's task (ranking: (query, passage) pairs), texts cut to the model's
    limit (the vanilla pipeline does not truncate)."""
    from multiverse.benchmark.baselines import accuracy_texts
    from multiverse.benchmark.texts import TextCutter
    from multiverse.bundle import load

    b = load(bundle)
    cutter = TextCutter(b.path, b.manifest.get("max_sequence_length"))
    items = accuracy_texts(b.task, limit=limit or 10**9)
    return [cutter.cut(t, cutter.max_length) if isinstance(t, str) else t for t in items]


def _fidelity_child(bundle: str, checkpoint: str, task: str, systems: list[str], cores: int, texts: list,
                    optimum_dir: str | None, openvino_dir: str | None) -> dict:
    from multiverse.benchmark.baselines import compare_accuracy, make_system

    built = {name: make_system(name, threads=cores, bundle=bundle, checkpoint=checkpoint, task=task,
                               optimum_dir=optimum_dir, openvino_dir=openvino_dir)
             for name in ["transformers", *[s for s in systems if s != "transformers"]]}
    out = compare_accuracy(built, task, texts)
    ov = built.get("openvino")
    if ov is not None:
        out["openvino"]["inference_precision"] = ov.inference_precision
    return out


def fidelity(bundle: str | Path, checkpoint: str | Path, task: str, systems: list[str], cores: int, texts: list,
             optimum_dir: str | Path | None, openvino_dir: str | Path | None) -> dict:
    """``{system: agreement with PyTorch}`` on ``texts`` for every system but ``transformers`` (the reference)."""
    return run_pinned(_fidelity_child, cores, str(bundle), str(checkpoint), task, list(systems), cores, list(texts),
                      str(optimum_dir) if optimum_dir else None, str(openvino_dir) if openvino_dir else None)


def _loop(call, texts: list, seconds: float) -> int:
    """Call ``call([text])`` over ``texts`` round-robin for ``seconds``; the number of completed calls."""
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        call([texts[n % len(texts)]])
        n += 1
    return n


class _ServedForThroughput:
    """``multiverse serve BUNDLE --performance-hint throughput --threads cores`` without HTTP: the server's predictor
    and engine pool (:mod:`multiverse.serve.throughput`), driven by ``2 × streams`` clients that each submit one
    request and await it, on one asyncio loop (as the HTTP routes do)."""

    def __init__(self, bundle: str, cores: int):
        from multiverse.serve import throughput
        from multiverse.serve.settings import ServeSettings

        self.settings = ServeSettings(performance_hint="throughput", threads=cores)
        self.predictor, self.plan = throughput.load_predictor(bundle, self.settings)
        self.clients = 2 * self.plan.streams
        self.label = (f"multiverse (serve --performance-hint throughput: {self.plan.streams} streams, "
                      f"{self.clients} clients)")
        self.pool = throughput.make_engine(self.predictor, self.settings, self.plan.streams, self.plan.batch_tokens)
        self.pool.start()  # one pool for every round, as a server keeps its engines

    def loop(self, texts: list, seconds: float) -> int:
        """Requests completed in ``seconds`` s."""
        import asyncio

        pool = self.pool

        async def main() -> int:
            loop, end, done = asyncio.get_running_loop(), time.perf_counter() + seconds, [0]

            async def client(i: int) -> None:
                while time.perf_counter() < end:
                    await pool.submit([texts[i % len(texts)]], {}, loop)
                    done[0] += 1
                    i += self.clients

            await asyncio.gather(*(client(c) for c in range(self.clients)))
            return done[0]

        return asyncio.run(main())


def _throughput_child(bundle: str, checkpoint: str, task: str, cores: int, texts: list, seconds: float,
                      rounds: int, openvino_dir: str) -> dict:
    from openvino import AsyncInferQueue

    from multiverse.benchmark.openvino_system import OpenVinoSystem, bundle_precision
    from multiverse.inference import Predictor

    serial = Predictor.from_bundle(bundle, threads=cores)
    serve_tp = _ServedForThroughput(bundle, cores)
    ov = OpenVinoSystem(openvino_dir, checkpoint, task, cores, hint="THROUGHPUT",
                        inference_precision=bundle_precision(bundle))
    nireq = int(ov.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = AsyncInferQueue(ov.compiled, nireq)
    done = [0]

    def finished(request, enc):  # runs on OpenVINO's thread: the same post-processing as the latency runs
        ov.handler.postprocess(request.get_output_tensor(ov.output.index).data, enc, {})
        done[0] += 1

    queue.set_callback(finished)

    def multiverse_serial(s):
        return _loop(lambda x: serial.predict(x), texts, s)

    def openvino(s):
        done[0], i, end = 0, 0, time.perf_counter() + s
        while time.perf_counter() < end:
            enc = ov.encode([texts[i % len(texts)]])
            queue.start_async(enc.arrays, enc)
            i += 1
        queue.wait_all()
        return done[0]

    configs = {"multiverse (serve: 1 engine × %d threads)" % cores: multiverse_serial,
               serve_tp.label: lambda s: serve_tp.loop(texts, s),
               "openvino (THROUGHPUT hint)": openvino}
    for fn in configs.values():  # warm-up
        fn(0.3)
    counts = {k: 0 for k in configs}
    elapsed = {k: 0.0 for k in configs}
    per_round: dict[str, list[float]] = {k: [] for k in configs}
    names = list(configs)
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            n = configs[k](seconds / rounds)
            dt = time.perf_counter() - t0
            counts[k] += n
            elapsed[k] += dt
            per_round[k].append(round(n / dt, 1))
    serve_tp.pool.stop(5.0)
    return {"req_per_s": {k: round(counts[k] / elapsed[k], 2) for k in names}, "requests": counts,
            "req_per_s_per_round": per_round,
            "seconds": {k: round(v, 2) for k, v in elapsed.items()}, "openvino_infer_requests": nireq,
            "openvino_streams": int(ov.compiled.get_property("NUM_STREAMS")),
            "openvino_inference_precision": ov.inference_precision, "rounds": rounds,
            "multiverse_streams": serve_tp.plan.streams, "multiverse_clients": serve_tp.clients,
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def throughput(bundle: str | Path, checkpoint: str | Path, task: str, cores: int, texts: list, seconds: float,
               openvino_dir: str | Path, rounds: int = 3) -> dict:
    """Requests per second (end to end, one text per request) of each configuration over ``seconds`` s in total,
    split into ``rounds`` interleaved slices; see the module docstring."""
    return run_pinned(_throughput_child, cores, str(bundle), str(checkpoint), task, cores, list(texts), seconds,
                      rounds, str(openvino_dir))
