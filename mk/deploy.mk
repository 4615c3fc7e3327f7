# Kubernetes targets of meshserve (included by the main Makefile).
# Needs docker, kind, helm and kubectl on PATH, except k8s-manifests (the repo venv only).

KIND            ?= kind
HELM            ?= helm
KUBECTL         ?= kubectl
KIND_CLUSTER    ?= meshserve
K8S_NAMESPACE   ?= meshserve
HELM_RELEASE    ?= meshserve
HELM_CHART      ?= deploy/helm/meshserve
HELM_KIND_VALUES ?= deploy/k8s/kind/values-kind.yaml
HELM_EXTRA_ARGS ?=
IMAGE_TAG       ?= dev
MESHSERVE_IMAGES ?= meshserve-gateway meshserve-features meshserve-preprocess meshserve-model
DEPLOY_PYTHON   ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)

.PHONY: kind-up kind-load helm-install helm-test helm-uninstall kind-down k8s-manifests k8s-manifests-check

kind-up:  ## create the local kind cluster (deploy/k8s/kind/kind-config.yaml)
	@if $(KIND) get clusters | grep -qx '$(KIND_CLUSTER)'; then \
	  echo "kind cluster $(KIND_CLUSTER) already exists"; \
	else \
	  $(KIND) create cluster --name $(KIND_CLUSTER) --config deploy/k8s/kind/kind-config.yaml --wait 120s; \
	fi

kind-load:  ## load the four images built by `make images` (tag IMAGE_TAG) into the kind nodes
	@for image in $(MESHSERVE_IMAGES); do \
	  echo "loading $$image:$(IMAGE_TAG)"; \
	  $(KIND) load docker-image $$image:$(IMAGE_TAG) --name $(KIND_CLUSTER) || exit 1; \
	done

helm-install:  ## install/upgrade the chart on the kind cluster (extra flags: HELM_EXTRA_ARGS)
	$(HELM) upgrade --install $(HELM_RELEASE) $(HELM_CHART) \
	  --namespace $(K8S_NAMESPACE) --create-namespace \
	  --kube-context kind-$(KIND_CLUSTER) \
	  -f $(HELM_KIND_VALUES) --set imageDefaults.tag=$(IMAGE_TAG) \
	  --wait --timeout 20m $(HELM_EXTRA_ARGS)

helm-test:  ## run the chart's helm test (gRPC health + one prediction)
	$(HELM) test $(HELM_RELEASE) --namespace $(K8S_NAMESPACE) --kube-context kind-$(KIND_CLUSTER) --logs

helm-uninstall:  ## remove the release from the kind cluster
	$(HELM) uninstall $(HELM_RELEASE) --namespace $(K8S_NAMESPACE) --kube-context kind-$(KIND_CLUSTER)

kind-down:  ## delete the local kind cluster
	$(KIND) delete cluster --name $(KIND_CLUSTER)

k8s-manifests:  ## regenerate deploy/k8s/{base,overlays} from the Helm chart
	$(DEPLOY_PYTHON) deploy/k8s/generate.py

k8s-manifests-check:  ## fail if deploy/k8s drifted from the chart
	$(DEPLOY_PYTHON) deploy/k8s/generate.py --check
