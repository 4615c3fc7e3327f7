"""Meaning, not only shape: selectors, ports, probes, env contracts, GPU, HPA, Istio routing
and the version consistency of the canary, for every case of the values matrix."""

from __future__ import annotations

import re
from typing import Any

import yaml
from chart_helpers import (
    CHART_DIR,
    CONTRACT_PORTS,
    ENV_PREFIX,
    HEALTH_NAMES,
    NAMESPACE,
    RELEASE,
    SERVICES,
    by_kind,
    component,
    config_env,
    container,
    deployments_selected,
    find,
    label_selector_match,
    labels_match,
    pod_templates,
    render,
    track,
)

Doc = dict[str, Any]


def pod_labels(deployment: Doc) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def selected_by(docs: list[Doc], selector: Doc) -> list[Doc]:
    """Deployments whose pods a metav1.LabelSelector selects."""
    return [d for d in by_kind(docs, "Deployment") if label_selector_match(selector, pod_labels(d))]


def container_ports(deployment: Doc) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container(deployment).get("ports", [])}


# ---------------------------------------------------------------- selectors and labels

def test_deployment_selectors_match_their_pods(docs: list[Doc]) -> None:
    for dep in by_kind(docs, "Deployment"):
        selector = dep["spec"]["selector"]["matchLabels"]
        assert labels_match(selector, dep["spec"]["template"]["metadata"]["labels"]), dep["metadata"]["name"]
        # Two Deployments must never select each other's pods (stable vs canary).
        for other in by_kind(docs, "Deployment"):
            if other is not dep:
                assert not labels_match(selector, other["spec"]["template"]["metadata"]["labels"]), (
                    f"{dep['metadata']['name']} selects the pods of {other['metadata']['name']}")


def test_every_service_selects_pods_and_targets_named_ports(docs: list[Doc]) -> None:
    for svc in by_kind(docs, "Service"):
        name = svc["metadata"]["name"]
        selected = deployments_selected(docs, svc["spec"]["selector"])
        assert selected, f"Service {name} selects no pods"
        comps = {component(d) for d in selected}
        assert len(comps) == 1, f"Service {name} mixes components {comps}"
        for port in svc["spec"]["ports"]:
            target = port["targetPort"]
            assert isinstance(target, str), f"{name}: targetPort {target!r} should name a container port"
            for dep in selected:
                assert target in container_ports(dep), f"{name}: targetPort {target} not a port of {dep['metadata']['name']}"
            if port["name"] == "grpc":
                assert port["appProtocol"] == "grpc"
                assert port["port"] == container_ports(selected[0])["grpc"]
        if name.endswith("-headless"):
            assert svc["spec"]["clusterIP"] == "None"
            assert {track(d) for d in selected} == {"stable"}
        elif name.endswith("-canary"):
            assert {track(d) for d in selected} == {"canary"}
        else:
            assert {p["name"] for p in svc["spec"]["ports"]} == {"grpc", "metrics"}


def test_each_service_has_main_and_headless_service(docs: list[Doc]) -> None:
    for svc in SERVICES:
        assert find(docs, "Service", f"{RELEASE}-{svc}") is not None
        assert find(docs, "Service", f"{RELEASE}-{svc}-headless") is not None


def test_rollouts_wait_for_clients_to_reconnect(docs: list[Doc], values: dict[str, Any]) -> None:
    """A new pod counts as available only after the clients' longest reconnect backoff, so
    a rolling update never removes the last pod some gateway is connected to."""
    from meshserve_runtime.channels import MAX_RECONNECT_BACKOFF_MS

    wanted = values.get("rollingUpdate", {}).get("minReadySeconds", 5)
    for dep in by_kind(docs, "Deployment"):
        assert dep["spec"]["minReadySeconds"] == wanted, dep["metadata"]["name"]
        assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    defaults = render({})
    assert all(d["spec"]["minReadySeconds"] * 1000 > MAX_RECONNECT_BACKOFF_MS for d in by_kind(defaults, "Deployment"))


def test_pdb_and_spread_select_exactly_their_deployment(docs: list[Doc]) -> None:
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        selected = deployments_selected(docs, pdb["spec"]["selector"]["matchLabels"])
        assert [d["metadata"]["name"] for d in selected] == [pdb["metadata"]["name"]]
        assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])
    for dep in by_kind(docs, "Deployment"):
        for tsc in dep["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
            selected = [d for d in by_kind(docs, "Deployment")
                        if label_selector_match(tsc["labelSelector"], d["spec"]["template"]["metadata"]["labels"])]
            assert selected == [dep]


def test_network_policies(docs: list[Doc], values: dict[str, Any]) -> None:
    policies = by_kind(docs, "NetworkPolicy")
    if not values["networkPolicy"]["enabled"]:
        assert not policies
        return
    assert {component(p) for p in policies} == set(SERVICES)
    gateway_pods = [d["spec"]["template"]["metadata"]["labels"] for d in by_kind(docs, "Deployment") if component(d) == "gateway"]
    for np in policies:
        comp = component(np)
        selected = selected_by(docs, np["spec"]["podSelector"])
        assert selected and {component(d) for d in selected} == {comp}
        assert np["spec"]["policyTypes"] == ["Ingress"]
        ports = {d["metadata"]["name"]: container_ports(d) for d in selected}
        rules = np["spec"]["ingress"]
        for rule in rules:
            for port in rule["ports"]:
                assert all(port["port"] in p for p in ports.values()), f"{np['metadata']['name']}: port {port['port']} unknown"
        grpc_rules = [r for r in rules if any(p["port"] == "grpc" for p in r["ports"])]
        metrics_rules = [r for r in rules if any(p["port"] == "metrics" for p in r["ports"])]
        assert len(grpc_rules) == 1 and len(metrics_rules) == 1
        assert metrics_rules[0]["from"][0]["namespaceSelector"] == values["networkPolicy"]["monitoring"]["namespaceSelector"]
        if comp == "gateway":
            assert "from" not in grpc_rules[0], "the gateway is reachable from outside the release by default"
        else:
            sources = grpc_rules[0]["from"]
            assert len(sources) == 1 and set(sources[0]) == {"podSelector"}, "internal services: gateway pods only"
            allowed = sources[0]["podSelector"]
            assert all(label_selector_match(allowed, labels) for labels in gateway_pods)
            for dep in by_kind(docs, "Deployment"):
                if component(dep) != "gateway":
                    assert not label_selector_match(allowed, dep["spec"]["template"]["metadata"]["labels"])


def test_gateway_ingress_can_be_restricted_but_keeps_the_helm_test() -> None:
    ingress_ns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "istio-ingress"}}}
    docs = render({"networkPolicy": {"gatewayIngressFrom": [ingress_ns]}})
    np = find(docs, "NetworkPolicy", f"{RELEASE}-gateway")
    sources = np["spec"]["ingress"][0]["from"]
    test_pod = by_kind(docs, "Pod")[0]
    assert any("podSelector" in s and label_selector_match(s["podSelector"], test_pod["metadata"]["labels"]) for s in sources)
    assert any("namespaceSelector" in s for s in sources)


# ---------------------------------------------------------------- containers, probes, env

def test_probes_use_native_grpc_and_the_right_health_names(docs: list[Doc], values: dict[str, Any]) -> None:
    for dep in by_kind(docs, "Deployment"):
        comp = component(dep)
        c = container(dep)
        # Always the health-only server, never the service port: a service at its concurrent-call
        # limit refuses every call there (RESOURCE_EXHAUSTED), probes included, and would be
        # restarted for being busy.
        health_port = container_ports(dep)["health"]
        assert health_port != container_ports(dep)["grpc"]
        assert config_env(docs, dep)[f"{ENV_PREFIX[comp]}_HEALTH_PORT"] == str(health_port)
        for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c[probe_name]
            assert set(probe) >= {"grpc", "periodSeconds", "failureThreshold"}
            assert not {"httpGet", "exec", "tcpSocket"} & set(probe)
            assert probe["grpc"]["port"] == health_port, f"{dep['metadata']['name']} {probe_name} port"
        assert c["startupProbe"]["grpc"]["service"] == HEALTH_NAMES[comp]
        assert c["readinessProbe"]["grpc"]["service"] == HEALTH_NAMES[comp]
        assert c["livenessProbe"]["grpc"].get("service", "") == "", "liveness checks the overall health \"\""
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "startup must allow >= 10 min for artifacts"


def test_containers_follow_the_service_contract(docs: list[Doc], values: dict[str, Any]) -> None:
    for dep in by_kind(docs, "Deployment"):
        comp = component(dep)
        c = container(dep)
        assert c["name"] == f"meshserve-{comp}"
        assert c["command"] == ["python", "-m", f"meshserve_{comp}"]
        repo = values[comp]["image"]["repository"]
        assert c["image"].rsplit(":", 1)[0].endswith(repo)
        ports = container_ports(dep)
        assert (ports["grpc"], ports["metrics"]) == CONTRACT_PORTS[comp]
        env = config_env(docs, dep)
        p = ENV_PREFIX[comp]
        assert env[f"{p}_HOST"] == "0.0.0.0"
        assert env[f"{p}_PORT"] == str(ports["grpc"])
        assert env[f"{p}_METRICS_PORT"] == str(ports["metrics"])
        assert env[f"{p}_LOG_LEVEL"] and env[f"{p}_LOG_JSON"] in ("true", "false")
        grace = float(env[f"{p}_GRACE_PERIOD_S"])
        assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace
        assert env["HOME"].startswith("/var/cache/meshserve") and env["TMPDIR"].startswith("/var/cache/meshserve")
        # Our own prefix, the standard OpenTelemetry variables, gRPC's switch, and the process basics only.
        assert all(k.startswith((p + "_", "OTEL_")) or k in {"HOME", "TMPDIR", "XDG_CACHE_HOME", "MESHSERVE_HOME", "MLFLOW_TRACKING_URI", "GRPC_EXPERIMENTS"}
                   for k in env), f"{dep['metadata']['name']}: unexpected env {sorted(env)}"
        assert env["OTEL_SERVICE_NAME"] == f"meshserve-{comp}"
        required = {
            "gateway": ["FEATURES_TARGET", "PREPROCESS_TARGET", "MODEL_TARGET", "MAX_BATCH_ROWS", "MODEL_NAME"],
            "features": ["FEAST_PROJECT", "ONLINE_STORE", "FEATURE_SERVICE"]
            + ([] if values["features"]["feast"]["existingSecret"] else ["FEAST_REGISTRY"]),
            "preprocess": ["MLFLOW_TRACKING_URI", "MODEL_NAME", "ALIAS"],
            "model": ["MLFLOW_TRACKING_URI", "MODEL_NAME", "ALIAS", "DEVICE", "NUM_THREADS"],
        }[comp]
        for key in required:
            assert f"{p}_{key}" in env, f"{dep['metadata']['name']} lacks {p}_{key}"
        expected_alias = values["canary"]["alias"] if track(dep) == "canary" else values.get(comp, {}).get("alias")
        if comp in ("preprocess", "model"):
            assert env[f"{p}_ALIAS"] == expected_alias


def test_secrets_are_referenced_never_inlined(case: str, docs: list[Doc], values: dict[str, Any]) -> None:
    for dep in by_kind(docs, "Deployment"):
        env = container(dep).get("env") or []
        for item in env:
            assert "value" not in item or not re.search(r"password|token|secret", item["name"], re.I)
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "secretKeyRef" in e.get("valueFrom", {})}
        comp = component(dep)
        if comp in ("preprocess", "model") and values["mlflow"]["existingSecret"]:
            assert refs["MLFLOW_TRACKING_TOKEN"] == {"name": values["mlflow"]["existingSecret"], "key": "token"}
        if comp == "features" and values["features"]["feast"]["existingSecret"]:
            feast = values["features"]["feast"]
            assert refs["MESHSERVE_FEATURES_FEAST_REGISTRY"] == {"name": feast["existingSecret"], "key": feast["registryKey"]}
            assert "MESHSERVE_FEATURES_FEAST_REGISTRY" not in config_env(docs, dep)
        if comp == "features" and values["features"]["redis"]["existingSecret"]:
            assert refs["MESHSERVE_FEATURES_REDIS_URL"]["name"] == values["features"]["redis"]["existingSecret"]
            assert "MESHSERVE_FEATURES_REDIS_URL" not in config_env(docs, dep)
    for cm in by_kind(docs, "ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            assert "password=" not in value, f"{cm['metadata']['name']}.{key} inlines a password"
    assert not by_kind(docs, "Secret"), "the chart never creates Secrets"


def test_pod_security(docs: list[Doc]) -> None:
    for owner, holder in pod_templates(docs):
        spec = holder["spec"]
        name = owner["metadata"]["name"]
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == 10001
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False, f"{name}: service links would clash with MESHSERVE_* settings"
        mounts_by_volume = {}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert sc.get("seccompProfile", pod_sc["seccompProfile"])["type"] == "RuntimeDefault"
            for m in c.get("volumeMounts", []):
                mounts_by_volume[m["mountPath"]] = volumes[m["name"]]
        assert "emptyDir" in mounts_by_volume["/tmp"], f"{name}: /tmp must be a writable emptyDir"
        if owner["kind"] == "Deployment":
            assert "emptyDir" in mounts_by_volume["/var/cache/meshserve"], f"{name}: artifact cache emptyDir"


def test_config_checksum_rolls_pods_on_config_change() -> None:
    def checksums(values: dict[str, Any]) -> dict[str, str]:
        return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                for d in by_kind(render(values), "Deployment")}

    before = checksums({})
    after = checksums({"model": {"numThreads": 2}})
    assert before[f"{RELEASE}-model"] != after[f"{RELEASE}-model"]
    assert before[f"{RELEASE}-gateway"] == after[f"{RELEASE}-gateway"]
    assert checksums({"logging": {"level": "DEBUG"}}) != before


# ---------------------------------------------------------------- GPU and autoscaling

def test_model_requests_a_gpu_exactly_when_asked(docs: list[Doc], values: dict[str, Any]) -> None:
    gpu = values["model"]["gpu"]
    resource = gpu["resourceName"]
    for dep in by_kind(docs, "Deployment"):
        res = container(dep).get("resources", {})
        pod = dep["spec"]["template"]["spec"]
        wants = component(dep) == "model" and gpu["enabled"]
        assert (resource in res.get("requests", {})) == wants, dep["metadata"]["name"]
        assert (resource in res.get("limits", {})) == wants, dep["metadata"]["name"]
        if wants:
            assert res["requests"][resource] == res["limits"][resource] == gpu["count"]
            for key, value in gpu["nodeSelector"].items():
                assert pod["nodeSelector"][key] == value
            for toleration in gpu["tolerations"]:
                assert toleration in pod["tolerations"]
            if gpu["runtimeClassName"]:
                assert pod["runtimeClassName"] == gpu["runtimeClassName"]
            if gpu["imageTag"] and track(dep) == "stable":
                assert container(dep)["image"].endswith(":" + gpu["imageTag"])
        else:
            assert "runtimeClassName" not in pod
            assert not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))


def image_tag(deployment: Doc) -> str:
    return container(deployment)["image"].rsplit(":", 1)[1]


def test_cuda_model_runs_the_cuda_image(docs: list[Doc], values: dict[str, Any]) -> None:
    """Device cuda needs a GPU and the CUDA build of the model image (docker/README.md tags it
    <tag>-cu126): the CPU build's torch sees no CUDA device, so select_device("cuda") raises
    and the pods never turn Ready. Any GPU model pod runs the CUDA build; nothing else does."""
    gpu = values["model"]["gpu"]
    suffix = gpu.get("imageTagSuffix", "")
    for dep in by_kind(docs, "Deployment"):
        name, tag = dep["metadata"]["name"], image_tag(dep)
        if component(dep) != "model":
            assert not tag.endswith("-cu126"), f"{name} runs a CUDA build: {tag}"
            continue
        if config_env(docs, dep)["MESHSERVE_MODEL_DEVICE"] == "cuda":
            assert gpu["enabled"], f"{name}: device cuda without model.gpu.enabled"
            assert gpu["resourceName"] in container(dep)["resources"]["limits"], f"{name}: device cuda without a GPU"
        if gpu["enabled"]:
            if gpu["imageTag"] and track(dep) == "stable":
                assert tag == gpu["imageTag"], name
            else:
                assert suffix and tag.endswith(suffix), f"{name}: device {values['model']['device']} runs {tag}, not the CUDA build"
        else:
            assert not (suffix and tag.endswith(suffix)), f"{name}: a CPU model runs the CUDA build {tag}"


def test_gpu_model_image_defaults_to_the_cuda_build() -> None:
    app_version = str(yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"])

    def images(values: dict[str, Any]) -> dict[str, str]:
        return {d["metadata"]["name"]: container(d)["image"] for d in by_kind(render(values), "Deployment")}

    gpu = {"device": "cuda", "gpu": {"enabled": True}}
    assert images({})[f"{RELEASE}-model"] == f"meshserve-model:{app_version}"
    out = images({"model": gpu})
    assert out[f"{RELEASE}-model"] == f"meshserve-model:{app_version}-cu126"
    assert out[f"{RELEASE}-gateway"] == f"meshserve-gateway:{app_version}"
    assert images({"model": gpu, "imageDefaults": {"tag": "1.2.3"}})[f"{RELEASE}-model"] == "meshserve-model:1.2.3-cu126"
    # A tag that already names the CUDA build is not suffixed twice.
    assert images({"model": {**gpu, "image": {"tag": "1.2.3-cu126"}}})[f"{RELEASE}-model"] == "meshserve-model:1.2.3-cu126"
    assert images({"model": {"device": "cuda", "gpu": {"enabled": True, "imageTagSuffix": "-cu128"}}})[
        f"{RELEASE}-model"] == f"meshserve-model:{app_version}-cu128"
    assert images({"model": {"device": "cuda", "gpu": {"enabled": True, "imageTag": "9.9-gpu"}}})[
        f"{RELEASE}-model"] == "meshserve-model:9.9-gpu"
    # An image that is its own CUDA build: suffix off.
    assert images({"model": {"device": "cuda", "gpu": {"enabled": True, "imageTagSuffix": ""}}})[
        f"{RELEASE}-model"] == f"meshserve-model:{app_version}"


def test_canary_of_a_gpu_model_runs_the_cuda_build_of_the_canary_tag() -> None:
    """canary.imageTag is shared by gateway, preprocess and model: only the model gets the suffix."""
    base = {"istio": {"enabled": True}, "canary": {"enabled": True, "imageTag": "0.2.0"},
            "model": {"device": "cuda", "gpu": {"enabled": True, "imageTag": "0.1.0-cu126"}}}
    images = {d["metadata"]["name"]: container(d)["image"] for d in by_kind(render(base), "Deployment")}
    assert images[f"{RELEASE}-model"] == "meshserve-model:0.1.0-cu126"
    assert images[f"{RELEASE}-model-canary"] == "meshserve-model:0.2.0-cu126"
    assert images[f"{RELEASE}-gateway-canary"] == "meshserve-gateway:0.2.0"
    assert images[f"{RELEASE}-preprocess-canary"] == "meshserve-preprocess:0.2.0"
    no_tag = {**base, "canary": {"enabled": True}}
    images = {d["metadata"]["name"]: container(d)["image"] for d in by_kind(render(no_tag), "Deployment")}
    assert images[f"{RELEASE}-model-canary"] == images[f"{RELEASE}-model"] == "meshserve-model:0.1.0-cu126"


# ---------------------------------------------------------------- canary availability

def canary_pdbs(docs: list[Doc]) -> dict[str, Doc]:
    return {component(p): p for p in by_kind(docs, "PodDisruptionBudget") if p["metadata"]["name"].endswith("-canary")}


def test_canary_pdbs_exactly_from_two_replicas(docs: list[Doc], values: dict[str, Any]) -> None:
    """A canary Deployment with 2+ replicas gets a PDB that lets a drain take one pod at a time;
    one with a single pod gets none (a budget could only block the drain)."""
    canary = values["canary"]
    pdbs = canary_pdbs(docs)
    expected = {svc for svc in ("gateway", "preprocess", "model")
                if canary["enabled"] and canary["replicas"][svc] >= 2 and values[svc]["pdb"]["enabled"]}
    assert set(pdbs) == expected
    for svc, pdb in pdbs.items():
        assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
        (dep,) = deployments_selected(docs, pdb["spec"]["selector"]["matchLabels"])
        assert dep["metadata"]["name"] == pdb["metadata"]["name"] == f"{RELEASE}-{svc}-canary"
        assert dep["spec"]["replicas"] == canary["replicas"][svc] >= 2
    if canary["enabled"] and canary["weight"] >= 50:
        assert all(canary["replicas"][svc] >= 2 for svc in ("gateway", "preprocess", "model"))


def test_canary_pdbs_follow_the_replica_counts() -> None:
    base = {"istio": {"enabled": True}, "canary": {"enabled": True}}
    # The default canary (weight 0, one pod each) renders, with no canary PDB.
    assert canary_pdbs(render(base)) == {}
    mixed = {**base, "canary": {"enabled": True, "weight": 40, "replicas": {"gateway": 2, "preprocess": 1, "model": 3}}}
    assert set(canary_pdbs(render(mixed))) == {"gateway", "model"}
    # <svc>.pdb.enabled=false turns off its canary PDB too.
    all_two = {"enabled": True, "weight": 100, "replicas": {"gateway": 2, "preprocess": 2, "model": 2}}
    assert set(canary_pdbs(render({**base, "canary": all_two}))) == {"gateway", "preprocess", "model"}
    assert set(canary_pdbs(render({**base, "canary": all_two, "model": {"pdb": {"enabled": False}}}))) == {"gateway", "preprocess"}


def test_hpas_target_their_deployments(docs: list[Doc], values: dict[str, Any]) -> None:
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    enabled = {svc for svc in SERVICES if values[svc]["autoscaling"]["enabled"]}
    assert {component(h) for h in hpas} == enabled
    for hpa in hpas:
        comp = component(hpa)
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["apiVersion"] == "apps/v1" and ref["kind"] == "Deployment"
        dep = find(docs, "Deployment", ref["name"])
        assert dep is not None, f"HPA {hpa['metadata']['name']} targets missing Deployment {ref['name']}"
        assert component(dep) == comp and track(dep) == "stable"
        assert "replicas" not in dep["spec"], "an HPA-managed Deployment must not set replicas"
        cfg = values[comp]["autoscaling"]
        assert hpa["spec"]["minReplicas"] == cfg["minReplicas"] <= hpa["spec"]["maxReplicas"] == cfg["maxReplicas"]
        behavior = hpa["spec"]["behavior"]
        for direction in ("scaleUp", "scaleDown"):
            assert behavior[direction]["policies"] and "stabilizationWindowSeconds" in behavior[direction]
        (metric,) = hpa["spec"]["metrics"]
        if comp == "model" and cfg["metric"] == "custom":
            assert metric["type"] == "Pods"
            assert metric["pods"]["metric"]["name"] == cfg["custom"]["name"]
            assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": str(cfg["custom"]["targetAverageValue"])}
        else:
            assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
            assert metric["resource"]["target"]["averageUtilization"] == cfg["targetCPUUtilizationPercentage"]
    for dep in by_kind(docs, "Deployment"):
        if component(dep) not in enabled or track(dep) == "canary":
            assert isinstance(dep["spec"].get("replicas"), int)


def test_service_accounts_exist_for_every_pod(docs: list[Doc], values: dict[str, Any]) -> None:
    accounts = {sa["metadata"]["name"] for sa in by_kind(docs, "ServiceAccount")}
    for dep in by_kind(docs, "Deployment"):
        name = dep["spec"]["template"]["spec"]["serviceAccountName"]
        if values[component(dep)]["serviceAccount"]["create"]:
            assert name in accounts
        else:
            assert name == "default"


# ---------------------------------------------------------------- gateway targets and routing

def resolve_target(docs: list[Doc], target: str) -> tuple[Doc, int]:
    """The Service a gRPC target names, and the port it asks for."""
    host_port = target.removeprefix("dns:///")
    host, port = host_port.rsplit(":", 1)
    name = host.split(".")[0]
    if "." in host:
        assert host == f"{name}.{NAMESPACE}.svc.cluster.local", f"target {target} outside the release namespace"
    svc = find(docs, "Service", name)
    assert svc is not None, f"target {target} names no rendered Service"
    assert int(port) in [p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc"], f"target {target}: wrong port"
    return svc, int(port)


def reachable_pods(docs: list[Doc], svc: Doc, headers: dict[str, str]) -> list[Doc]:
    """Deployments a call to `svc` can land on, applying the VirtualService if there is one."""
    pods = deployments_selected(docs, svc["spec"]["selector"])
    host = f"{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    vs = next((v for v in by_kind(docs, "VirtualService") if host in v["spec"]["hosts"]), None)
    if vs is None:
        return pods
    dr = next(d for d in by_kind(docs, "DestinationRule") if d["spec"]["host"] == host)
    subsets = {s["name"]: s["labels"] for s in dr["spec"].get("subsets", [])}
    for route in vs["spec"]["http"]:
        matches = route.get("match")
        def matched(match: Doc) -> bool:
            return all(headers.get(h) == m["exact"] for h, m in match.get("headers", {}).items())

        if matches and not any(matched(match) for match in matches):
            continue
        out = []
        for dest in route["route"]:
            if dest.get("weight", 100) > 0:
                labels = subsets[dest["destination"]["subset"]]
                out += [p for p in pods if labels_match(labels, p["spec"]["template"]["metadata"]["labels"])]
        return out
    raise AssertionError(f"no route of {vs['metadata']['name']} matches {headers}")


def test_gateway_targets_name_rendered_services(docs: list[Doc], values: dict[str, Any]) -> None:
    istio = values["istio"]["enabled"]
    for dep in by_kind(docs, "Deployment"):
        if component(dep) != "gateway":
            continue
        env = config_env(docs, dep)
        for downstream in ("features", "preprocess", "model"):
            target = env[f"MESHSERVE_GATEWAY_{downstream.upper()}_TARGET"]
            svc, _ = resolve_target(docs, target)
            assert {component(d) for d in deployments_selected(docs, svc["spec"]["selector"])} == {downstream}
            if istio:
                assert not target.startswith("dns:///"), "with Istio the sidecar balances a ClusterIP Service"
            else:
                assert target.startswith("dns:///") and svc["spec"]["clusterIP"] == "None", \
                    "without a mesh: client-side round robin over the headless Service"


def test_canary_is_version_consistent(docs: list[Doc], values: dict[str, Any]) -> None:
    """Follow a request through the gateway, as Istio would route it: whichever gateway
    track it enters, the preprocess and model pods it can reach are all of one track, the
    track it entered, and load that track's alias."""
    gateway_svc = find(docs, "Service", f"{RELEASE}-gateway")
    header = values["canary"]["header"]
    for headers in ({}, {header["name"]: header["value"]}):
        for gateway in reachable_pods(docs, gateway_svc, headers):
            entered = track(gateway)
            env = config_env(docs, gateway)
            # The gateway does not promise to forward the header to its callees: try both.
            for forwarded in ({}, headers):
                hop_tracks = {}
                for downstream in ("preprocess", "model"):
                    svc, _ = resolve_target(docs, env[f"MESHSERVE_GATEWAY_{downstream.upper()}_TARGET"])
                    pods = reachable_pods(docs, svc, forwarded)
                    assert pods
                    tracks = {track(p) for p in pods}
                    assert len(tracks) == 1, f"{entered} gateway reaches {downstream} on tracks {tracks}"
                    hop_tracks[downstream] = tracks.pop()
                    aliases = {config_env(docs, p)[f"{ENV_PREFIX[downstream]}_ALIAS"] for p in pods}
                    expected = values["canary"]["alias"] if hop_tracks[downstream] == "canary" else values[downstream]["alias"]
                    assert aliases == {expected}
                assert hop_tracks["preprocess"] == hop_tracks["model"], f"skew: {hop_tracks} ({headers=}, {forwarded=})"
                assert hop_tracks["model"] == entered, f"a request that entered {entered} left it: {hop_tracks}"


def test_istio_routes(docs: list[Doc], values: dict[str, Any]) -> None:
    if not values["istio"]["enabled"]:
        return
    drs = {d["spec"]["host"]: d for d in by_kind(docs, "DestinationRule")}
    services = {f"{s['metadata']['name']}.{NAMESPACE}.svc.cluster.local": s for s in by_kind(docs, "Service")}
    canary = values["canary"]
    vss = by_kind(docs, "VirtualService")
    assert {component(v) for v in vss} == set(SERVICES)
    for dr in drs.values():
        assert dr["spec"]["host"] in services, f"DestinationRule host {dr['spec']['host']} is no Service"
        assert dr["spec"]["trafficPolicy"]["outlierDetection"] and dr["spec"]["trafficPolicy"]["connectionPool"]
        svc = services[dr["spec"]["host"]]
        for subset in dr["spec"].get("subsets", []):
            labels = subset["labels"]
            pods = [p for p in deployments_selected(docs, svc["spec"]["selector"])
                    if labels_match(labels, p["spec"]["template"]["metadata"]["labels"])]
            assert pods, f"subset {subset['name']} of {dr['metadata']['name']} matches no Deployment"
            assert {track(p) for p in pods} == {subset["name"]}
    for vs in vss:
        comp = component(vs)
        for route in vs["spec"]["http"]:
            weights = [d.get("weight", 100 if len(route["route"]) == 1 else 0) for d in route["route"]]
            assert sum(weights) == 100, f"{vs['metadata']['name']}/{route.get('name')}: weights {weights}"
            for dest in route["route"]:
                host = dest["destination"]["host"]
                assert host in vs["spec"]["hosts"] and host in drs
                names = [s["name"] for s in drs[host]["spec"].get("subsets", [])]
                assert dest["destination"]["subset"] in names
        routes = {r["name"]: r for r in vs["spec"]["http"]}
        has_canary = canary["enabled"] and comp != "features"
        assert ("canary-by-header" in routes) == has_canary
        if has_canary:
            match = routes["canary-by-header"]["match"][0]["headers"]
            assert match == {canary["header"]["name"]: {"exact": canary["header"]["value"]}}
            assert [d["destination"]["subset"] for d in routes["canary-by-header"]["route"]] == ["canary"]
        assert list(routes)[-1] == "default" and "match" not in routes["default"]
        split = {d["destination"]["subset"]: d["weight"] for d in routes["default"]["route"]}
        if comp == "gateway" and canary["enabled"]:
            assert split == {"stable": 100 - canary["weight"], "canary": canary["weight"]}
        else:
            assert split == {"stable": 100}, f"{comp}: only the entry point may split by weight"
    if values["istio"]["ingress"]["gateways"]:
        gw = find(docs, "VirtualService", f"{RELEASE}-gateway")
        assert gw["spec"]["gateways"][0] == "mesh"
        assert set(values["istio"]["ingress"]["hosts"]) <= set(gw["spec"]["hosts"])


def test_istio_security(docs: list[Doc], values: dict[str, Any]) -> None:
    if not values["istio"]["enabled"]:
        return
    gateway_sa = {d["spec"]["template"]["spec"]["serviceAccountName"]
                  for d in by_kind(docs, "Deployment") if component(d) == "gateway"}
    assert len(gateway_sa) == 1, "both gateway tracks share one service account"
    principal = f"cluster.local/ns/{NAMESPACE}/sa/{gateway_sa.pop()}"
    for pa in by_kind(docs, "PeerAuthentication"):
        assert pa["spec"]["mtls"]["mode"] == "STRICT"
        selected = selected_by(docs, pa["spec"]["selector"])
        assert selected and {component(d) for d in selected} == {component(pa)}
        for port, mode in pa["spec"].get("portLevelMtls", {}).items():
            assert all(int(port) == container_ports(d)["metrics"] for d in selected), "only the metrics port relaxes mTLS"
            assert mode["mode"] == values["istio"]["mtls"]["metricsPortMode"]
    aps = by_kind(docs, "AuthorizationPolicy")
    assert {component(a) for a in aps} == {"features", "preprocess", "model"}
    for ap in aps:
        selected = selected_by(docs, ap["spec"]["selector"])
        ports = {container_ports(d)["grpc"] for d in selected}
        assert ap["spec"]["action"] == "ALLOW"
        grpc_rules = [r for r in ap["spec"]["rules"] if any(str(p) in r["to"][0]["operation"]["ports"] for p in ports)]
        assert len(grpc_rules) == 1
        assert grpc_rules[0]["from"] == [{"source": {"principals": [principal]}}]
        for rule in ap["spec"]["rules"]:
            if rule is not grpc_rules[0]:
                metrics_port = str(container_ports(selected[0])["metrics"])
                assert "from" not in rule and rule["to"][0]["operation"]["ports"] == [metrics_port]
    for owner, holder in pod_templates(docs):
        assert holder["metadata"]["labels"].get("sidecar.istio.io/inject") == "true"


def test_service_monitor_scrapes_each_service_once(docs: list[Doc], values: dict[str, Any]) -> None:
    sms = by_kind(docs, "ServiceMonitor")
    if not values["metrics"]["serviceMonitor"]["enabled"]:
        assert not sms
        return
    (sm,) = sms
    for key, value in values["metrics"]["serviceMonitor"]["labels"].items():
        assert sm["metadata"]["labels"][key] == value
    selected = [s for s in by_kind(docs, "Service") if label_selector_match(sm["spec"]["selector"], s["metadata"]["labels"])]
    assert sorted(component(s) for s in selected) == sorted(SERVICES), "each service exactly once"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    for endpoint in sm["spec"]["endpoints"]:
        assert all(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in selected)
        assert endpoint["path"] == "/metrics"


def test_the_features_pods_settings_load_as_rendered(case: str, docs: list[Doc], values: dict[str, Any]) -> None:
    """The features service's Feast settings, from the rendered ConfigMap, pass the service's
    own validation: e.g. a registry URL the image cannot open fails here, not in a pod that
    never turns Ready."""
    from meshserve_feature_repo.config import FeastSettings

    for dep in by_kind(docs, "Deployment"):
        if component(dep) != "features":
            continue
        env = {k.removeprefix("MESHSERVE_FEATURES_").lower(): v for k, v in config_env(docs, dep).items()
               if k.startswith("MESHSERVE_FEATURES_")}
        fields = set(FeastSettings.model_fields)
        settings = FeastSettings(**{k: v for k, v in env.items() if k in fields})
        if not values["features"]["feast"]["existingSecret"]:
            assert settings.feast_registry == values["features"]["feast"]["registry"]
        mounts = {m["name"]: m["mountPath"] for m in container(dep).get("volumeMounts", [])}
        volumes = {v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]}
        for extra in values["features"]["extraVolumeMounts"]:
            assert mounts[extra["name"]] == extra["mountPath"] and extra["name"] in volumes
        if settings.registry_kind == "file" and not values["features"]["feast"]["existingSecret"]:
            # A file registry must live in a mounted volume, not the pod's throw-away cache.
            assert any(settings.feast_registry.startswith(path.rstrip("/") + "/") for path in mounts.values()), settings.feast_registry


def test_registry_basic_auth_credentials_replace_the_default_token() -> None:
    """The README's basic-auth recipe: username and password from the Secret, and the default
    token mapping dropped with null (Helm deletes a default key set to null), so no pod waits
    on a Secret key that does not exist."""
    docs = render({"mlflow": {"existingSecret": "mlflow-credentials", "secretEnv": {
        "MLFLOW_TRACKING_USERNAME": "username", "MLFLOW_TRACKING_PASSWORD": "password", "MLFLOW_TRACKING_TOKEN": None,
    }}})
    for dep in by_kind(docs, "Deployment"):
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(dep).get("env") or []
                if "secretKeyRef" in e.get("valueFrom", {})}
        mlflow_refs = {name: ref for name, ref in refs.items() if name.startswith("MLFLOW_")}
        if component(dep) in ("preprocess", "model"):
            assert mlflow_refs == {
                "MLFLOW_TRACKING_USERNAME": {"name": "mlflow-credentials", "key": "username"},
                "MLFLOW_TRACKING_PASSWORD": {"name": "mlflow-credentials", "key": "password"},
            }
        else:
            assert mlflow_refs == {}  # gateway and features never read the registry
