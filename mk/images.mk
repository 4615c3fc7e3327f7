# Container images of meshserve (included by the main Makefile). Needs a Docker engine.
# docker/README.md tells how the base image is chosen and how to build a CUDA model image.

IMAGE_TAG        ?= dev
# Empty: python:3.11-slim-bookworm if the engine has it, else meshserve-base:bookworm
# (built locally with debootstrap when missing). Set it to force a base, e.g.
#   make images BASE_IMAGE=python:3.11-slim-bookworm
BASE_IMAGE       ?=
LOCAL_BASE_IMAGE ?= meshserve-base:bookworm
# torch build of the model image: cpu, or a CUDA variant such as cu126 (tagged IMAGE_TAG-cu126).
TORCH_VARIANT    ?= cpu
TORCH_INDEX_URL  ?=
DOCKER           ?= docker
IMAGE_SERVICES   := gateway features preprocess model

IMAGE_ENV = IMAGE_TAG='$(IMAGE_TAG)' BASE_IMAGE='$(BASE_IMAGE)' LOCAL_BASE_IMAGE='$(LOCAL_BASE_IMAGE)' \
            TORCH_VARIANT='$(TORCH_VARIANT)' TORCH_INDEX_URL='$(TORCH_INDEX_URL)' \
            DOCKER='$(DOCKER)' PYTHON='$(PY)'

.PHONY: images $(addprefix image-,$(IMAGE_SERVICES)) base-image test-containers images-clean

images: install  ## build the four images meshserve-<svc>:IMAGE_TAG (offline-capable, see docker/README.md)
	$(IMAGE_ENV) docker/build-images.sh $(IMAGE_SERVICES)

$(addprefix image-,$(IMAGE_SERVICES)): image-%: install  ## build one image, e.g. make image-model
	$(IMAGE_ENV) docker/build-images.sh $*

base-image:  ## build the local Debian bookworm base (debootstrap + docker import) if missing
	DOCKER='$(DOCKER)' docker/build-base-image.sh '$(LOCAL_BASE_IMAGE)'

test-containers: install  ## run the four images on host networking, predict once, SIGTERM them
	$(PY) -m meshserve_training train --if-empty
	IMAGE_TAG='$(IMAGE_TAG)' DOCKER='$(DOCKER)' $(PY) docker/test_containers.py

images-clean:  ## remove the wheelhouses under build/images and the meshserve-<svc>:IMAGE_TAG images
	rm -rf build/images
	-$(DOCKER) image rm $(foreach s,$(IMAGE_SERVICES),meshserve-$(s):$(IMAGE_TAG)) 2>/dev/null
