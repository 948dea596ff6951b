# llama-adapter: one binary, one static library, one test binary per tests/test_*.c.
# Objects go to build/ (build/debug, build/asan for the variant builds).

CC      ?= cc
CXX     ?= c++
PKGS    := openblas libcjson hdf5 sentencepiece ompi-c
MODE    ?= release
BUILD   ?= build$(if $(filter release,$(MODE)),,/$(MODE))

WARN    := -Wall -Wextra -Wshadow -Wpointer-arith -Wstrict-prototypes -Wmissing-prototypes \
           -Wno-unused-parameter -Wvla -Wformat=2 -Wno-format-truncation
OPT_release := -O3 -march=native
OPT_debug   := -O0 -g3
OPT_asan    := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer
OPT     := $(OPT_$(MODE))
# CI (which sets CI=true) turns warnings into errors.
WERROR  := $(if $(filter true,$(CI)),-Werror)
# Never -ffast-math: it changes the numerics of the backward passes.
# OpenBLAS: the OpenMP build, whatever the system alternative says. With both Debian variants
# installed, openblas.pc (an alternative) may name the pthreads build, whose threads spin with
# sched_yield against ours; Debian ships the OpenMP build's own openblas.pc in its directory, and
# putting that first on PKG_CONFIG_PATH makes every pkg-config call below (flags, libs, the
# rpath) take it. tests/test_robust_blas.c checks the library the built binary loads.
BLAS_PC    := $(firstword $(wildcard /usr/lib/*/openblas-openmp/pkgconfig/openblas.pc /usr/lib64/openblas-openmp/pkgconfig/openblas.pc))
PKG_CONFIG := $(if $(BLAS_PC),PKG_CONFIG_PATH=$(dir $(BLAS_PC))$${PKG_CONFIG_PATH:+:$$PKG_CONFIG_PATH} )pkg-config
PKG_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell $(PKG_CONFIG) --libs $(PKGS) 2>/dev/null)
# The rpath makes the loader take libopenblas.so.0 from that directory first.
BLAS_DIR   := $(shell $(PKG_CONFIG) --variable=libdir openblas 2>/dev/null)
CPPFLAGS   := -I. $(PKG_CFLAGS) -MMD -MP
CFLAGS     := -std=c11 -D_GNU_SOURCE $(OPT) -fopenmp $(WARN) $(WERROR) $(EXTRA_CFLAGS)
CXXFLAGS   := -std=c++17 $(OPT) -fopenmp -Wall -Wextra $(WERROR)
comma      := ,
SAN_LD     := $(if $(filter asan,$(MODE)),-fsanitize=address$(comma)undefined)
RPATH      := $(if $(BLAS_DIR),-Wl$(comma)-rpath$(comma)$(BLAS_DIR))
LDFLAGS    := -fopenmp $(SAN_LD) $(RPATH)
LDLIBS     := $(PKG_LIBS) -lstdc++ -lm

LIB_DIRS ?= autograd autograd/kernels data checkpoints trainer
LIB_C    := $(filter-out trainer/main.c,$(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.c)))
LIB_CXX  := $(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.cpp))
LIB_OBJ  := $(LIB_C:%.c=$(BUILD)/%.o) $(LIB_CXX:%.cpp=$(BUILD)/%.o)
LIB      := $(BUILD)/libllama_adapter.a
BIN      := $(BUILD)/llama-adapter
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
BENCH_SRC := $(wildcard bench/*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)
DEMO_SRC  := $(wildcard demo/*.c)
DEMO_BIN  := $(DEMO_SRC:demo/%.c=$(BUILD)/demo/%)

.PHONY: all test bench probe7b quality demo debug asan clean deps tests-build

# all: the llama-adapter binary (build/llama-adapter).
all: $(BIN)

# deps: install the missing Debian packages (apt-get; root or sudo).
deps:
	@sh scripts/deps.sh

# test: install what is missing, build, run every test binary; ends with "N passed, N failed".
test: deps
	@$(MAKE) --no-print-directory tests-build
	@sh tests/run_tests.sh $(BUILD)

tests-build: $(BIN) $(TEST_BIN) $(DEMO_BIN) $(BENCH_BIN)

# bench: speed figures (tables and ratios), never pass/fail; PyTorch as the peer when present.
bench: deps
	@$(MAKE) --no-print-directory $(BIN) $(BENCH_BIN)
	@sh bench/run_bench.sh $(BUILD)

# probe7b: the 7B recipe on this machine: writes a 13.5 GB synthetic model once, one train step
# and a short generation (peak RSS, memory plan, step time); not part of CI.
probe7b: deps
	@$(MAKE) --no-print-directory $(BIN) $(BENCH_BIN)
	@sh bench/probe_7b.sh $(BUILD)

# quality: bf16 against f32 over the demo's adapter run and 200 Alpaca steps (not part of CI).
quality: deps
	@$(MAKE) --no-print-directory $(BIN) $(BENCH_BIN) $(DEMO_BIN)
	@sh bench/quality_bf16.sh $(BUILD)

# demo: the built-in end-to-end story (offline, cached in demo_out/).
demo: deps
	@$(MAKE) --no-print-directory $(BIN) $(DEMO_BIN)
	@sh scripts/demo.sh $(BUILD)

# debug / asan: the same tests on an -O0 -g build / under AddressSanitizer+UBSan.
debug:
	@$(MAKE) --no-print-directory MODE=debug test
asan:
	@$(MAKE) --no-print-directory MODE=asan test

# clean: remove every build product.
clean:
	rm -rf build

$(BIN): $(BUILD)/trainer/main.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/bench/%: $(BUILD)/bench/%.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/demo/%: $(BUILD)/demo/%.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

$(BUILD)/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(CPPFLAGS) $(CXXFLAGS) -c -o $@ $<

.SECONDARY:
-include $(shell find build -name '*.d' 2>/dev/null)
