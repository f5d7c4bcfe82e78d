"""Every file in examples/ is exercised.

- YAML: every ``*.yml``/``*.yaml`` parses.
- Kubernetes: Deployment, Service and HPA validate offline against the Kubernetes 1.30 JSON schemas
  (``kubernetes-validate``, strict: unknown fields are errors). KServe's InferenceService has no
  schema there: its ``spec.predictor`` (KServe inlines a core/v1 PodSpec in it) is validated against
  the PodSpec schema once KServe's own component fields are set aside, and those are checked by name.
  The files agree with each other and with the image (port 8080, probe routes, CPU request = limit,
  node selector on the target's CPU flags).
- compose.yaml: structure, probe route and stop signal (no engine run: compose needs bridge networking).
- python/: the three scripts run on a tiny checkpoint (optimize → inspect → predict).
- ci/: the shell steps of both CI files run as scripts against a tiny checkpoint, in order, with
  GitHub's ``$GITHUB_ENV`` / GitLab's dotenv passed on between steps: the optimize step (exit 0, and
  exit 3 with the gate message under ``--tolerance 0``), validate on the held-out split, inspect and
  ``multiverse image --dockerfile-only``. Not run: the ``pip install`` steps (this venv is the
  install), ``uses:`` actions (artifact upload), the image push and the kaniko build (they need a
  registry; the real image build is tests/test_image.py).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
K8S = EXAMPLES / "kubernetes"
K8S_VERSION = "1.30"
PORT = 8080


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_every_example_file_is_covered():
    covered = {"ci/github-actions.yml", "ci/gitlab-ci.yml", "compose.yaml", "kubernetes/deployment.yaml",
               "kubernetes/service.yaml", "kubernetes/hpa.yaml", "kubernetes/kserve-inferenceservice.yaml",
               "python/optimize.py", "python/inspect_bundle.py", "python/predict.py", "README.md"}
    found = {str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert found == covered, found ^ covered


@pytest.mark.parametrize("path", sorted(p.relative_to(EXAMPLES) for p in EXAMPLES.rglob("*.y*ml")), ids=str)
def test_yaml_parses(path):
    assert _docs(EXAMPLES / path)


# --------------------------------------------------------------------------- Kubernetes

def _k8s() -> dict[str, dict]:
    return {d["kind"]: d for f in K8S.glob("*.yaml") for d in _docs(f)}


@pytest.mark.parametrize("kind", ["Deployment", "Service", "HorizontalPodAutoscaler"])
def test_kubernetes_manifest_validates_against_schema(kind):
    import kubernetes_validate

    doc = _k8s()[kind]
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    broken = copy.deepcopy(doc)
    broken["spec"]["replicaz"] = 1  # the validator is not blind: strict mode rejects an unknown field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def _podspec_validator():
    """Draft 2020-12 validator for core/v1 PodSpec from kubernetes-validate's bundled (strict) schemas."""
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate.utils import schema_contents
    from referencing import Registry, Resource

    version = next(v for v in reversed(kubernetes_validate.utils.all_versions()) if v.startswith(K8S_VERSION))
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    schema = schema_contents(f"{folder}/podspec-v1.json", version)
    defs = schema_contents(f"{folder}/_definitions.json", version)
    registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


# KServe v1beta1 PredictorSpec = PodSpec (inlined) + ComponentExtensionSpec + model-format fields.
_KSERVE_COMPONENT_FIELDS = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency",
                            "timeout", "canaryTrafficPercent", "logger", "batcher", "labels", "annotations",
                            "deploymentStrategy"}


def test_kserve_inferenceservice():
    (isvc,) = _docs(K8S / "kserve-inferenceservice.yaml")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    assert isvc["metadata"]["name"] and set(isvc["spec"]) == {"predictor"}
    predictor = dict(isvc["spec"]["predictor"])
    component = {k: predictor.pop(k) for k in list(predictor) if k in _KSERVE_COMPONENT_FIELDS}
    assert component["minReplicas"] <= component["maxReplicas"] and component["scaleMetric"] in ("cpu", "memory")
    validator = _podspec_validator()
    validator.validate(predictor)  # the rest is a core/v1 PodSpec: containers, nodeSelector, probes
    assert not validator.is_valid({**predictor, "nodeSelectorz": {}})
    (container,) = predictor["containers"]
    _check_serving_container(container)


def _check_serving_container(c: dict) -> None:
    assert c["ports"][0]["containerPort"] == PORT
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and get["port"] in (PORT, "http")
    r = c["resources"]
    assert r["requests"]["cpu"] == r["limits"]["cpu"], "CPU request = limit: threads follow the quota"


def test_kubernetes_files_agree_with_each_other_and_the_image():
    from multiverse.targets import get_target

    docs = _k8s()
    dep, svc, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}
    (c,) = pod["spec"]["containers"]
    _check_serving_container(c)
    assert svc["spec"]["ports"][0]["targetPort"] == c["ports"][0]["name"]
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001  # the image's USER
    # The node selector asks for every CPU flag of the target the image's bundle was built for.
    flags = get_target("icelake").isa.required_flags
    labels = {k.rsplit(".", 1)[-1].lower() for k in pod["spec"]["nodeSelector"] if "cpu-cpuid" in k}
    assert {f.replace("_", "") for f in flags} <= labels


def test_compose_file():
    (doc,) = _docs(EXAMPLES / "compose.yaml")
    (svc,) = doc["services"].values()
    assert svc["ports"] == [f"{PORT}:{PORT}"] and svc["stop_signal"] == "SIGTERM"
    assert "/v2/health/ready" in " ".join(svc["healthcheck"]["test"])
    assert float(svc["cpus"]) >= 1


# --------------------------------------------------------------------------- python/

def _py(script: str, *args, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / "python" / script), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


def test_python_examples(tiny_checkpoints, tmp_path):
    r = _py("optimize.py", tiny_checkpoints["feature-extraction"], "--target", "native", "--out", tmp_path / "out",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    bundle = Path(r.stdout.splitlines()[0].split(":", 1)[1].strip())
    assert (bundle / "multiverse.json").is_file() and "onnxruntime==" in r.stdout
    r = _py("inspect_bundle.py", bundle, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["intact"] and info["task"] == "feature-extraction" and info["validated"]
    r = _py("predict.py", bundle, "hello world", "a second text", "--threads", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [row["text"] for row in rows] == ["hello world", "a second text"] and len(rows[0]["result"]) == 32
    with open(bundle / "tokenizer.json", "a") as fh:  # a corrupted file: inspect says so, exit 1
        fh.write(" ")
    r = _py("inspect_bundle.py", bundle, cwd=tmp_path)
    assert r.returncode == 1 and "sha256 mismatch: tokenizer.json" in r.stdout


# --------------------------------------------------------------------------- ci/

SKIPPED_GITHUB_STEPS = {"install", "push"}  # pip install of the package itself; registry push


def _bash(script: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    # GitHub's and GitLab's default: bash with -e (GitHub adds -o pipefail).
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=1200)


def _read_env_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def _ci_env(tmp_path: Path, variables: dict, overrides: dict) -> dict:
    env = {**os.environ, **{k: str(v) for k, v in variables.items()}, **overrides}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `multiverse` of this venv
    return env


@pytest.fixture(scope="module")
def ci_inputs(tiny_checkpoints, tmp_path_factory):
    """A tiny checkpoint and a labelled JSONL eval file with the CI files' variable names."""
    work = tmp_path_factory.mktemp("ci")
    texts = [f"example number {i} about {topic}" for i, topic in enumerate(["sport", "music", "politics", "tech"] * 8)]
    (work / "eval.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return {"MODEL": str(tiny_checkpoints["feature-extraction"]), "TARGET": "native",
            "EVAL_DATA": str(work / "eval.jsonl"), "TOLERANCE": "0.01"}


def _github_steps():
    wf = yaml.safe_load((EXAMPLES / "ci" / "github-actions.yml").read_text())
    (job,) = wf["jobs"].values()
    return wf, [s for s in job["steps"] if "run" in s and s.get("id") not in SKIPPED_GITHUB_STEPS]


def test_github_actions_steps_run(ci_inputs, tmp_path):
    wf, steps = _github_steps()
    assert [s.get("id") for s in steps][0] == "optimize"
    github_env, github_output = tmp_path / "github_env", tmp_path / "github_output"
    variables = {k: v for k, v in wf["env"].items() if "${{" not in str(v)}
    overrides = {**ci_inputs, "IMAGE": "localhost/ci-example:test", "IMAGE_FLAGS": "--dockerfile-only --context ctx",
                 "GITHUB_ENV": str(github_env), "GITHUB_OUTPUT": str(github_output)}
    for step in steps:
        env = {**_ci_env(tmp_path, variables, overrides), **_read_env_file(github_env)}
        r = _bash(step["run"], env, tmp_path)
        assert r.returncode == 0, (step["name"], r.stdout[-2000:], r.stderr[-3000:])
    bundle = tmp_path / _read_env_file(github_env)["BUNDLE"]  # relative to the job's working folder
    assert (bundle / "requirements.txt").is_file()
    assert json.loads((tmp_path / "validate.json").read_text())["passed"] is True
    assert (tmp_path / "ctx" / "Dockerfile").is_file()


def test_github_actions_gate_failure_fails_the_job_with_the_message(ci_inputs, tmp_path):
    wf, steps = _github_steps()
    step = steps[0]
    variables = {k: v for k, v in wf["env"].items() if "${{" not in str(v)}
    env = _ci_env(tmp_path, variables, {**ci_inputs, "TOLERANCE": "0", "GITHUB_ENV": str(tmp_path / "env"),
                                        "GITHUB_OUTPUT": str(tmp_path / "out")})
    r = _bash(step["run"], env, tmp_path)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "::error title=Accuracy gate failed::Accuracy gate failed at tolerance 0" in r.stdout
    assert not _read_env_file(tmp_path / "env")


def test_gitlab_ci_scripts_run(ci_inputs, tmp_path):
    ci = yaml.safe_load((EXAMPLES / "ci" / "gitlab-ci.yml").read_text())
    assert ci["stages"] == ["optimize", "validate", "image"]
    assert ci["optimize"]["artifacts"]["reports"]["dotenv"] == "bundle.env"
    dotenv: dict[str, str] = {}
    for job in ("optimize", "validate"):  # `image` is the kaniko build: needs a registry, not run here
        env = {**_ci_env(tmp_path, ci["variables"], ci_inputs), **dotenv}
        for line in ci[job]["script"]:
            r = _bash(line, env, tmp_path)
            assert r.returncode == 0, (job, line, r.stdout[-2000:], r.stderr[-3000:])
        dotenv.update(_read_env_file(tmp_path / "bundle.env"))
    assert (tmp_path / dotenv["BUNDLE"]).is_dir() and json.loads((tmp_path / "validate.json").read_text())["passed"]
    ctx = tmp_path / "image-context"
    assert (ctx / "Dockerfile").is_file() and (ctx / "bundle" / "requirements.txt").is_file()
    kaniko = " ".join(ci["image"]["script"])
    assert "--context" in kaniko and "image-context/Dockerfile" in kaniko
