# The two commands a new user types (README.md): `make demo` and `make test`.
# Both install the Debian packages that are missing (as root, with apt-get), configure, build,
# then run the embedded demo recipe or the test suite.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
SANITIZE ?=
# Besides the build and `make deb` (file, dpkg-dev, jq), the tests' tools: nginx (the hub tests'
# server), spm_encode (sentencepiece), python3 (a plain HTTP server), openssl (test certificates),
# git (hash-object for the hub's ETags), jq, clang (the fuzz targets); node and npm below. A test
# whose tool is missing fails.
DEB_PACKAGES = build-essential cmake pkg-config libyaml-dev liblua5.4-dev libcurl4-openssl-dev \
	libjansson-dev libpcre2-dev libxxhash-dev libssl-dev nginx-light sentencepiece file dpkg-dev jq \
	libsnappy-dev libzstd-dev zlib1g-dev libbrotli-dev python3 openssl git clang
ifneq ($(SANITIZE),)
BUILD := build-san
CMAKE_FLAGS += -DSANITIZE=$(SANITIZE) -DQLORA_CUDA=OFF
# every test runs under the sanitizers; the kill-and-resume loops (20 kills each in the plain
# run) take 6 kills here, since the sanitizers slow the CPU training they interrupt 3-4x
TEST_ENV = KILL_TRIALS=6 KILLS=6
endif
ifneq ($(CI),)
# CI: warnings are errors; CUDA code is compiled for one architecture (sm_90) to save time
CMAKE_FLAGS += -DQLORA_WERROR=ON -DCMAKE_CUDA_ARCHITECTURES=90
endif

.PHONY: all deps build demo test test-gpu fuzz fuzz-smoke clean install uninstall deb

all: build

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root (or install:$$missing)" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi; \
	if ! command -v npm >/dev/null || ! command -v node >/dev/null; then \
	  echo "installing: nodejs npm (the tests install their JavaScript references with npm; Debian 12's node 18 and npm 9 do)"; \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root (or install: nodejs npm)" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; \
	fi

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	$(BUILD)/qlora-run recipes/demo.yaml

test: build
	cd $(BUILD) && $(TEST_ENV) ctest --output-on-failure -j $(JOBS) -LE gpu

test-gpu: build
	cd $(BUILD) && ctest --output-on-failure -L gpu

# make install [PREFIX=/usr/local] [DESTDIR=...]: the program, ready recipes and hooks under
# share/qlora-run, docs, the man page and bash/zsh completions. make uninstall removes exactly the
# files the install wrote (build/install_manifest.txt), nothing else. make deb: a Debian package.
PREFIX ?= /usr/local
install:
	@[ -x $(BUILD)/qlora-run ] || $(MAKE) build
	@d="$(DESTDIR)$(PREFIX)"; while [ ! -e "$$d" ]; do d=$$(dirname "$$d"); done; \
	if [ ! -w "$$d" ]; then \
	  echo "make install: cannot write to '$$d' (for $(DESTDIR)$(PREFIX)): run as root, or choose another PREFIX=..." >&2; exit 1; \
	fi
	DESTDIR="$(DESTDIR)" cmake --install $(BUILD) --prefix "$(PREFIX)"

uninstall:
	@[ -f $(BUILD)/install_manifest.txt ] || { echo "make uninstall: nothing was installed from $(BUILD)" >&2; exit 1; }
	@while read -r f; do \
	  if [ -f "$$f" ] || [ -L "$$f" ]; then rm -f "$$f" && echo "removed $$f"; fi; \
	done < $(BUILD)/install_manifest.txt
	@rm -f $(BUILD)/install_manifest.txt

deb: build
	cd $(BUILD) && cpack -G DEB

# libFuzzer targets (clang): `make fuzz` builds them in build-fuzz/fuzz/; `make fuzz-smoke`
# runs each for FUZZ_SECONDS (CI); tests/fuzz/run.sh TARGET SECONDS for a long run.
FUZZ_SECONDS ?= 15
fuzz: deps
	cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DQLORA_FUZZ=ON -DQLORA_CUDA=OFF
	cmake --build build-fuzz -j $(JOBS) --target $$(cd tests/fuzz && ls fuzz_*.c | sed 's/\.c$$//' | tr '\n' ' ')

fuzz-smoke: fuzz
	@for t in $$(cd tests/fuzz && ls fuzz_*.c | sed 's/\.c$$//'); do \
	  tests/fuzz/run.sh $$t $(FUZZ_SECONDS) || exit 1; \
	done

clean:
	rm -rf build build-san build-fuzz
