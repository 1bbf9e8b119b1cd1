# The two commands the README names: `make demo` and `make test`. Each does its own set-up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements-torch.txt | sha1sum | cut -c1-12)
FMNIST := /usr/share/datasets/fashion-mnist
CLIPART := /usr/share/openclipart/png

.PHONY: demo test test-slow setup data clean

$(STAMP): pyproject.toml requirements-torch.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-torch.txt
	$(PY) -m pip install -q -e '.[testbed,test,benchmark,distributed]'
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

# Fashion-MNIST and the clip art come from Debian's packages; other real data from ../shared/data when present.
data:
	@need=""; \
	[ -f $(FMNIST)/t10k-images-idx3-ubyte.gz ] || need="$$need dataset-fashion-mnist"; \
	[ -d $(CLIPART) ] || need="$$need openclipart-png"; \
	if [ -n "$$need" ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq $$need) >/dev/null || echo "warning: could not install$$need"; \
	  else echo "note: missing data; install it with: sudo apt-get install -y$$need"; fi; \
	fi

demo: setup data
	$(VENV)/bin/clipforget demo --out runs/demo

test: setup data
	$(PY) -m pytest -q

test-slow: setup data
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) .pytest_cache
