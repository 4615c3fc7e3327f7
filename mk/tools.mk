# promtool for the chart's alert-rule tests (tests/chart/test_observability_chart.py), from
# Debian's package registry into the venv, without root; tried once per venv, best effort.
$(VENV)/.promtool: tools/fetch_promtool.sh | $(VENV)/.installed
	tools/fetch_promtool.sh $(VENV)/bin
	touch $@

test: $(VENV)/.promtool
