// The narrow C ABI between Isoflow's sandbox process (Rust) and V8 (Debian's
// libnode108).
//
// Ownership and threads:
//   - isoflow_v8_init runs once per process, before anything else.
//   - An isoflow_v8 is one isolate with one context and the prelude already
//     evaluated. It is created, run at most once, and disposed on the same OS
//     thread. isoflow_v8_terminate is the only call allowed from another
//     thread, and only while the isolate is alive.
//   - The host callbacks run on the isolate's thread during isoflow_v8_run.
//     Strings passed to them are valid only for the duration of the call.
//   - Anything fatal (a V8 CHECK, an out-of-memory V8 cannot recover from)
//     writes one line to stderr and ends the process with exit code 70: the
//     process is disposable, and the node fails the one step it was running.
#ifndef ISOFLOW_V8_BRIDGE_H
#define ISOFLOW_V8_BRIDGE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct isoflow_v8 isoflow_v8;

// A borrowed string from the host; ok = 0 means it is an error message.
typedef struct {
  const char* ptr;
  size_t len;
  int ok;
} isoflow_v8_slice;

typedef struct {
  void* data;
  // A log line (level 0 debug .. 3 error), at most the init's max_log_line
  // bytes of it; `total_len` is the whole line's length in bytes. Returns 0
  // to stop the step (a log limit was exceeded), non-zero to go on.
  int (*log)(void* data, int level, const char* text, size_t len, size_t total_len);
  // ctx.xml: op 0 parse, 1 stringify. The slice stays valid until the next call.
  isoflow_v8_slice (*xml)(void* data, int op, const char* arg, size_t arg_len,
                          const char* options, size_t options_len);
  // A buffer for the output's `len` bytes of UTF-8, or NULL when `len` is
  // over the output limit.
  char* (*output)(void* data, size_t len);
  // Error details: field 0 message, 1 stack. At most the init's
  // max_error_text bytes, a longer text cut with its size noted.
  void (*text)(void* data, int field, const char* text, size_t len);
  // V8's code cache for the step's module, offered after a successful run
  // that was not given a usable one.
  void (*code_cache)(void* data, const char* bytes, size_t len);
  // A test hook (only when init was told to expose them). The slice stays
  // valid until the next call.
  isoflow_v8_slice (*test)(void* data, const char* name, size_t name_len, const char* arg,
                           size_t arg_len);
  // The bridge has made its string of the input and will not read the
  // host's bytes again: the host may free them.
  void (*input_consumed)(void* data);
} isoflow_v8_host;

enum {
  ISOFLOW_V8_OK = 0,
  ISOFLOW_V8_SYNTAX = 1,
  ISOFLOW_V8_EXCEPTION = 2,
  ISOFLOW_V8_TERMINATED = 3,
  ISOFLOW_V8_HEAP_LIMIT = 4,
  ISOFLOW_V8_MODULE = 5,
  ISOFLOW_V8_INPUT = 6,
  ISOFLOW_V8_NOT_SERIALIZABLE = 7,
  ISOFLOW_V8_NEVER_SETTLED = 8,
  ISOFLOW_V8_OUTPUT_LIMIT = 9,
  ISOFLOW_V8_INTERNAL = 10,
};

enum {
  ISOFLOW_V8_FIELD_MESSAGE = 0,
  ISOFLOW_V8_FIELD_STACK = 1,
};

typedef struct {
  int status;
  // 1-based position in the step's source; 0 when unknown.
  int line;
  int column;
} isoflow_v8_result;

typedef struct {
  // V8 flags, as on node's command line.
  const char* flags;
  const char* prelude;
  size_t prelude_len;
  // Longest log line and error text handed to the host, in bytes.
  size_t max_log_line;
  size_t max_error_text;
  // Non-zero: give the prelude a `test` host function (test programs only).
  int test_hooks;
} isoflow_v8_options;

// Initialises V8 once per process. Returns 0 on success; on failure writes
// a message into `error`.
int isoflow_v8_init(const isoflow_v8_options* options, char* error, size_t error_len);

// A fresh isolate whose heap (ArrayBuffers included) is limited to
// `heap_limit` bytes, with a context in which the prelude has run. NULL on
// failure, with a message in `error`.
isoflow_v8* isoflow_v8_new(size_t heap_limit, char* error, size_t error_len);

// Runs the step: parses `input` (JSON), evaluates `source` as an ES module
// named `filename`, calls its default export, drains microtasks, serialises
// the result through the host's output buffer. `cache` (may be NULL) is a
// code cache that host->code_cache produced for exactly this source: V8
// only checks its length, so the host must key caches by the full text.
isoflow_v8_result isoflow_v8_run(isoflow_v8* v8, const isoflow_v8_host* host,
                                 const char* source, size_t source_len,
                                 const char* filename, size_t filename_len,
                                 const char* input, size_t input_len,
                                 const char* cache, size_t cache_len);

// Stops running JavaScript as soon as possible, and for good: the host
// calls no more JavaScript in this isolate afterwards. Thread-safe.
void isoflow_v8_terminate(isoflow_v8* v8);

// Disposes of the isolate. `v8` is invalid afterwards.
void isoflow_v8_dispose(isoflow_v8* v8);

#ifdef __cplusplus
}
#endif

#endif
