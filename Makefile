# tuckerize — the two commands a person needs are `make demo` and `make test`.
SHELL := /bin/bash
PY ?= /usr/bin/python3
export ONNXRUNTIME_NODE_INSTALL_CUDA := skip
export PYTHONPATH := $(CURDIR)/engine
DEB_PACKAGES := python3-torch python3-torchvision python3-onnx python3-scipy python3-numpy \
                python3-pytest python3-hypothesis python3-jsonschema dataset-fashion-mnist \
                prometheus

.PHONY: setup test test-engine test-service demo bench typecheck openapi clean

setup: .cache/apt.stamp node_modules/.package-lock.json .cache/prisma.stamp

# apt-get only when a package is missing, so a second `make setup` takes seconds.
.cache/apt.stamp: Makefile
	@mkdir -p .cache
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

node_modules/.package-lock.json: package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

.cache/prisma.stamp: prisma/schema.prisma node_modules/.package-lock.json
	@mkdir -p .cache
	npx prisma generate >/dev/null
	@touch $@

# Headless Chromium renders the report page (test/report-page.test.ts): installed for the service tests only.
.cache/chromium.stamp:
	@mkdir -p .cache
	@if ! dpkg-query -W -f='$${Status}\n' chromium 2>/dev/null | grep -q '^install ok installed'; then \
	  echo "installing Debian package: chromium"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi
	@touch $@

typecheck: setup
	npx tsc -p tsconfig.json --noEmit

test-engine: setup
	cd engine && $(PY) -m pytest -q -p no:cacheprovider tests

test-service: setup .cache/chromium.stamp
	npm test

test: setup typecheck test-engine test-service

demo: setup
	npm run demo

bench: setup
	npm run bench

openapi: setup
	npm run openapi

clean:
	rm -rf dist .cache .data
