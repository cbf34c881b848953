# GNU make file for the libFuzzer harnesses. Not used directly: `make fuzz`
# (mk/fuzz.am) runs it from the top build directory and passes
#   top_srcdir top_builddir FUZZ_CC FUZZ_SOURCES FUZZ_DEP_CFLAGS FUZZ_LIBS
# FUZZ_SOURCES is the libcore.a + libcred.a source list of Makefile.am;
# its .c files are compiled again here with clang and the sanitizers
# (the gcc-built libraries are never reused), into $(F)/obj, archived
# as $(F)/libfuzzproxy.a and linked into one binary per
# tests/fuzz/fuzz_<name>.c as $(F)/<name>.
F		 = fuzz
FUZZ_SAN	 = -fsanitize=address,undefined -fno-sanitize-recover=undefined \
		   -fno-omit-frame-pointer
FUZZ_CFLAGS	 = -std=gnu11 -g -O1 -Wall -Wextra -Wno-unused-parameter
FUZZ_CPPFLAGS	 = -include $(top_builddir)/autoconf.h \
		   -I$(top_srcdir)/proxy -I$(top_builddir)/proxy \
		   -I$(top_srcdir)/tests/fuzz
AR		?= ar

# Generated sources (providers_builtin.c) are in the build tree, the rest
# in the source tree; make looks in the current directory first.
vpath %.c $(top_srcdir)

LIB_SRCS	:= $(filter %.c,$(FUZZ_SOURCES))
LIB_OBJS	:= $(patsubst %.c,$(F)/obj/%.o,$(LIB_SRCS))
HARNESS_SRCS	:= $(sort $(wildcard $(top_srcdir)/tests/fuzz/fuzz_*.c))
HARNESSES	:= $(patsubst $(top_srcdir)/tests/fuzz/fuzz_%.c,%,$(HARNESS_SRCS))
BINS		:= $(addprefix $(F)/,$(HARNESSES))

all: $(BINS)
	@echo "fuzz: built $(words $(BINS)) harnesses in $(F)/: $(HARNESSES)"

$(F)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_SAN) -fsanitize=fuzzer-no-link \
	    $(FUZZ_CPPFLAGS) $(FUZZ_DEP_CFLAGS) -MMD -MP -c -o $@ $<

$(F)/libfuzzproxy.a: $(LIB_OBJS)
	@rm -f $@
	$(AR) rcs $@ $(LIB_OBJS)

$(F)/harness/%.o: $(top_srcdir)/tests/fuzz/fuzz_%.c
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_SAN) -fsanitize=fuzzer \
	    $(FUZZ_CPPFLAGS) $(FUZZ_DEP_CFLAGS) -MMD -MP -c -o $@ $<

$(F)/%: $(F)/harness/%.o $(F)/libfuzzproxy.a
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $< \
	    $(F)/libfuzzproxy.a $(FUZZ_LIBS)

-include $(LIB_OBJS:.o=.d) $(patsubst %,$(F)/harness/%.d,$(HARNESSES))

.PHONY: all
.SECONDARY:
