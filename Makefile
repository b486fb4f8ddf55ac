# The two commands of the README: `make demo` runs rbee's main job on the built-in local default,
# `make test` runs the whole suite. Each creates or updates .venv by itself.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rbee-installed
# llama.cpp is compiled for the instruction sets this machine has, named one by one, not -march=native: on a VM whose
# CPU reports AMX (seen here: Sapphire Rapids under Firecracker), the native build segfaults on the first batch of two
# or more tokens, so AMX stays off. AVX-512 with VNNI is on where /proc/cpuinfo lists it: llama.cpp's int8 dot
# products then take a batch's 8-token step in ~24 ms against ~29 ms with AVX2 alone (single tokens cost the same),
# which is what batching gains from. Such a build stops with an illegal instruction on a CPU without AVX-512, so a
# wheelhouse built here is for machines like this one. Exported, so the wheelhouse the install test builds gets the
# same. Set CMAKE_ARGS to override.
ifeq ($(shell uname -m),x86_64)
AVX512_VNNI := $(shell for f in avx512f avx512cd avx512vl avx512dq avx512bw avx512_vnni avx_vnni; do \
	grep -qw $$f /proc/cpuinfo || exit 0; done; echo ON)
CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF \
	-DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_AVX512=$(or $(AVX512_VNNI),OFF) \
	-DGGML_AVX512_VNNI=$(or $(AVX512_VNNI),OFF) -DGGML_AVX_VNNI=$(or $(AVX512_VNNI),OFF)
export CMAKE_ARGS
endif

.PHONY: demo test lint unit bench clean system

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "rbee needs Python 3.11 or newer"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,gguf,embed,mlx,ctransformers,speech,piper,transcription,image,ha]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rbee apply examples/local.yaml --yes
	@echo
	$(BIN)/rbee infer --model smollm2 --seed 7 "In two sentences, what does a queen bee do?"
	@echo
	@echo "The fleet is running. Ask it yourself, with the admin API key that rbee key prints:"
	@echo "  curl -N http://127.0.0.1:8080/v1/chat/completions -H \"Authorization: Bearer \$$($(BIN)/rbee key 2>/dev/null)\" \\"
	@echo "    -H 'Content-Type: application/json' \\"
	@echo "    -d '{\"model\": \"smollm2\", \"stream\": true, \"messages\": [{\"role\": \"user\", \"content\": \"Hi!\"}]}'"
	@echo "  RBEE_KEY=\$$($(BIN)/rbee key 2>/dev/null) $(BIN)/python -c 'import os; from openai import OpenAI; \\"
	@echo "    c = OpenAI(base_url=\"http://127.0.0.1:8080/v1\", api_key=os.environ[\"RBEE_KEY\"]); \\"
	@echo "    print(c.chat.completions.create(model=\"smollm2\", messages=[{\"role\": \"user\", \"content\": \"Hi!\"}]).choices[0].message.content)'"
	@echo "  $(BIN)/rbee status"
	@echo "  $(BIN)/rbee ui     # the web UI: fleet, models, playground, plan, events, metrics"
	@echo "Tear it down (no process is left): $(BIN)/rbee destroy examples/local.yaml --yes"

lint: $(STAMP)
	$(BIN)/ruff check rbee tests features bench deploys conftest.py
	$(BIN)/ruff format --check rbee tests features bench deploys conftest.py
	$(BIN)/mypy rbee
	$(BIN)/lint-imports
	$(BIN)/oxlint --deny-warnings -D correctness -D suspicious rbee/queen/ui

# The system packages the tests drive (sshd hosts, systemd, chromium): installed on Debian or Ubuntu as root.
system:
	@scripts/system-packages

# Every test leaves its proof bundle (tests/proof/): its transcript, seeds, versions and hardware, and outcome.
test: system lint
	$(BIN)/python -m pytest --proof-bundle build/proof

bench: $(STAMP)
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
