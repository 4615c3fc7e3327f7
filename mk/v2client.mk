# A second venv with Triton's Python client (tritonclient[grpc]), for the test that calls the
# model service as a standard KServe V2 client would (tests/e2e/test_v2_client.py). Separate
# from $(VENV) because tritonclient needs protobuf<7 and meshserve pins protobuf 7.
# `make install` builds it once; it is rebuilt only when requirements/v2-client.txt changes.
# Exported so the test (run by `make test`) looks for the same venv.
export V2CLIENT_VENV ?= .venv-v2client

install: $(V2CLIENT_VENV)/.installed

$(V2CLIENT_VENV)/.installed: requirements/v2-client.txt
	test -x $(V2CLIENT_VENV)/bin/python || $(PYTHON) -m venv $(V2CLIENT_VENV)
	$(V2CLIENT_VENV)/bin/pip install -q --disable-pip-version-check -r requirements/v2-client.txt
	touch $@
