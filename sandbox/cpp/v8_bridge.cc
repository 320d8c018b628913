// Isoflow's bridge to V8 10.2 (Debian's libnode108). See v8_bridge.h for the
// ABI and its threading rules.
//
// Every isolate made here is used for one step at most: isoflow_v8_new builds
// it (isolate, context, prelude) before a step arrives, isoflow_v8_run runs
// the step, isoflow_v8_dispose throws it away. Nothing a step does to its
// built-ins can therefore reach another step.
//
// Limits enforced here: the heap (a near-heap-limit callback that terminates
// the step and grants headroom so V8 can unwind instead of aborting), and
// ArrayBuffer memory (an allocator with a byte budget that counts the heap
// in use too, because backing stores live outside the V8 heap). Time is
// enforced by the host's watchdog through isoflow_v8_terminate. What V8
// cannot count (ICU, allocations inside builtins) is capped from outside,
// by the sandbox process's memory limit.
//
// Rules for this file, because the step's code is hostile:
//   - no ToLocalChecked on anything a step can size or shape: every string
//     made from step data goes through NewString, which checks its length;
//   - every size_t that becomes an int is checked first;
//   - once a step is stopped (time, logs, heap), no JavaScript runs again in
//     its isolate: error details are read only while the step may still run,
//     and their texts are cut to the host's limit;
//   - a fatal condition ends the process (FatalError, OnFatalOutOfMemory):
//     nothing jumps out of V8.

#include "v8_bridge.h"

#include <libplatform/libplatform.h>
#include <sys/random.h>
#include <unistd.h>
#include <v8.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <pthread.h>
#include <string>

namespace {

// Exit code of a process V8 gave up on (see process.rs, EXIT_FATAL).
constexpr int kExitFatal = 70;

// Process-wide state is deliberately leaked: the process ends with _exit,
// and static destructors must not pull the platform out from under V8.
v8::Platform* g_platform = nullptr;
const std::string* g_prelude = nullptr;
size_t g_max_log_line = 16 * 1024;
size_t g_max_error_text = 8 * 1024;
bool g_test_hooks = false;
// V8's code cache for the prelude, made once with every function compiled
// eagerly: parsing and lazily compiling the prelude in every fresh isolate
// otherwise costs about a fifth of a trivial step.
const v8::ScriptCompiler::CachedData* g_prelude_cache = nullptr;
// Kept alive for the whole process: without a live isolate V8 rebuilds the
// shared read-only heap at every Isolate::New.
v8::Isolate* g_keeper = nullptr;
v8::ArrayBuffer::Allocator* g_keeper_allocator = nullptr;

constexpr char kPreludeName[] = "isoflow:prelude";

void write_error(char* error, size_t error_len, const std::string& message) {
  if (error == nullptr || error_len == 0) return;
  size_t n = std::min(message.size(), error_len - 1);
  std::memcpy(error, message.data(), n);
  error[n] = '\0';
}

// Writes one line to stderr and ends the process. Only async-signal-safe
// calls: it can be reached from any state V8 is in.
[[noreturn]] void Die(const char* what, const char* location, const char* message) {
  const char* parts[] = {"isoflow-sandbox: ", what, location == nullptr ? "" : location,
                         message == nullptr ? "" : ": ", message == nullptr ? "" : message,
                         "\n"};
  for (const char* part : parts) {
    ssize_t ignored = write(2, part, std::strlen(part));
    (void)ignored;
  }
  _exit(kExitFatal);
}

// Entropy for Math.random's seed: getrandom(2) is allowed in the sandbox,
// /dev/urandom (V8's default) is out of reach.
bool Entropy(unsigned char* buffer, size_t length) {
  size_t filled = 0;
  while (filled < length) {
    ssize_t n = getrandom(buffer + filled, length - filled, 0);
    if (n <= 0) return false;
    filled += static_cast<size_t>(n);
  }
  return true;
}

class BudgetAllocator;

}  // namespace

struct isoflow_v8 {
  v8::Isolate* isolate = nullptr;
  pthread_t thread{};
  BudgetAllocator* allocator = nullptr;
  size_t heap_limit = 0;
  v8::Global<v8::Context> context;
  v8::Global<v8::Value> ctx;
  v8::Global<v8::Function> parse_input;
  v8::Global<v8::Function> finish;
  const isoflow_v8_host* host = nullptr;
  std::atomic<bool> heap_exceeded{false};
  // Set by isoflow_v8_terminate (the watchdog) and by the log limit: from
  // then on no JavaScript is called in this isolate.
  std::atomic<bool> stopped{false};
};

namespace {

// ArrayBuffer backing stores with a byte budget shared with the heap: a
// buffer is refused when it and the heap in use would not fit the limit
// together. V8 may free backing stores from its background threads, hence
// the atomic counter.
class BudgetAllocator final : public v8::ArrayBuffer::Allocator {
 public:
  BudgetAllocator(size_t budget, isoflow_v8* owner) : budget_(budget), owner_(owner) {}

  void* Allocate(size_t length) override {
    if (!Reserve(length)) return nullptr;
    void* data = std::calloc(length == 0 ? 1 : length, 1);
    if (data == nullptr) Release(length);
    return data;
  }

  void* AllocateUninitialized(size_t length) override {
    if (!Reserve(length)) return nullptr;
    void* data = std::malloc(length == 0 ? 1 : length);
    if (data == nullptr) Release(length);
    return data;
  }

  void Free(void* data, size_t length) override {
    std::free(data);
    Release(length);
  }

 private:
  // The heap in use, when asked on the isolate's own thread (the only one
  // that runs the step's code); 0 elsewhere.
  size_t HeapInUse() const {
    if (owner_->isolate == nullptr || !pthread_equal(owner_->thread, pthread_self())) return 0;
    v8::HeapStatistics stats;
    owner_->isolate->GetHeapStatistics(&stats);
    return stats.used_heap_size();
  }

  bool Reserve(size_t length) {
    size_t heap = HeapInUse();
    size_t used = used_.load(std::memory_order_relaxed);
    do {
      if (heap > budget_ || length > budget_ - heap || used > budget_ - heap - length) {
        return false;
      }
    } while (!used_.compare_exchange_weak(used, used + length, std::memory_order_relaxed));
    return true;
  }

  void Release(size_t length) { used_.fetch_sub(length, std::memory_order_relaxed); }

  const size_t budget_;
  isoflow_v8* const owner_;
  std::atomic<size_t> used_{0};
};

size_t NearHeapLimit(void* data, size_t current_limit, size_t initial_limit) {
  auto* self = static_cast<isoflow_v8*>(data);
  if (!self->heap_exceeded.exchange(true)) {
    // Said where the node can read it if the process does not survive the
    // headroom below (its memory cap may end it first): then the step
    // failed for its heap limit, and the node says so.
    static const char kSaid[] = "isoflow-sandbox: heap limit reached\n";
    ssize_t ignored = write(2, kSaid, sizeof kSaid - 1);
    (void)ignored;
  }
  self->stopped.store(true);
  self->isolate->TerminateExecution();
  // Headroom for V8 to reach the termination point instead of giving up. It
  // must fit the largest single object V8 can allocate (about 1 GiB: a
  // maximal string or array), because one oversized allocation is retried
  // once after this callback. The memory is only used if the step really
  // allocates it, and the process's own memory limit caps what it can be.
  return current_limit + (size_t{1} << 30) + initial_limit;
}

// V8 reports some allocation failures as fatal whatever the heap limit
// callback says (a hash table past its maximum capacity: "invalid table
// size", e.g. `new Array(1e9).fill(0)`). The process is disposable: it
// says so and ends; the node fails the step.
void OnFatalOutOfMemory(const char* location, bool is_heap_oom) {
  Die("out of memory: V8 gave up in ", location, nullptr);
}

void FatalError(const char* location, const char* message) {
  Die("fatal V8 error in ", location, message);
}

// A V8 string of `len` bytes of UTF-8, if V8 can hold one that long.
bool NewString(v8::Isolate* isolate, const char* data, size_t len, v8::Local<v8::String>* out) {
  if (len > static_cast<size_t>(v8::String::kMaxLength)) return false;
  return v8::String::NewFromUtf8(isolate, data, v8::NewStringType::kNormal,
                                 static_cast<int>(len))
      .ToLocal(out);
}

// Throws an Error with `message`, or a fixed one if even that cannot be made.
void Throw(v8::Isolate* isolate, const std::string& message) {
  v8::Local<v8::String> text;
  if (!NewString(isolate, message.data(), message.size(), &text)) {
    text = v8::String::NewFromUtf8Literal(isolate, "steps cannot do that");
  }
  isolate->ThrowException(v8::Exception::Error(text));
}

// At most `max` bytes of a string's UTF-8 (whole characters only; every
// lone surrogate replaced by U+FFFD, which String::Utf8Value would write
// as three bytes that are not UTF-8). `total` gets the whole length.
std::string Utf8(v8::Isolate* isolate, v8::Local<v8::String> text, size_t max, size_t* total) {
  size_t length = static_cast<size_t>(std::max(text->Utf8Length(isolate), 0));
  if (total != nullptr) *total = length;
  size_t n = std::min({length, max, static_cast<size_t>(INT_MAX)});
  std::string out(n, '\0');
  int written = text->WriteUtf8(isolate, out.data(), static_cast<int>(n), nullptr,
                                v8::String::NO_NULL_TERMINATION |
                                    v8::String::REPLACE_INVALID_UTF8);
  out.resize(static_cast<size_t>(std::max(written, 0)));
  return out;
}

// A string value's UTF-8, all of it (the caller knows it is bounded).
std::string Utf8(v8::Isolate* isolate, v8::Local<v8::Value> value) {
  if (value.IsEmpty() || !value->IsString()) return std::string();
  return Utf8(isolate, value.As<v8::String>(), SIZE_MAX, nullptr);
}

// A text for an error report: at most g_max_error_text bytes, a longer one
// cut with its size noted.
std::string ErrorText(v8::Isolate* isolate, v8::Local<v8::String> text) {
  size_t total = 0;
  std::string out = Utf8(isolate, text, g_max_error_text, &total);
  if (total > out.size()) {
    out += "… (cut: " + std::to_string(total) + " bytes in all)";
  }
  return out;
}

isoflow_v8* Self(const v8::FunctionCallbackInfo<v8::Value>& info) {
  return static_cast<isoflow_v8*>(info.Data().As<v8::External>()->Value());
}

// host.log(level, text)
void HostLog(const v8::FunctionCallbackInfo<v8::Value>& info) {
  isoflow_v8* self = Self(info);
  v8::Isolate* isolate = info.GetIsolate();
  if (self->host == nullptr || self->stopped.load() || !info[1]->IsString()) return;
  int level = info[0]->IsInt32() ? info[0].As<v8::Int32>()->Value() : 1;
  size_t total = 0;
  std::string text = Utf8(isolate, info[1].As<v8::String>(), g_max_log_line, &total);
  if (self->host->log(self->host->data, level, text.data(), text.size(), total) == 0) {
    self->stopped.store(true);
    isolate->TerminateExecution();
  }
}

// Hands a host result back to JavaScript: returned when ok, thrown otherwise.
void Answer(const v8::FunctionCallbackInfo<v8::Value>& info, isoflow_v8_slice out,
            const char* what) {
  v8::Isolate* isolate = info.GetIsolate();
  v8::Local<v8::String> text;
  if (!NewString(isolate, out.ptr, out.len, &text)) {
    isolate->ThrowException(v8::Exception::RangeError(
        v8::String::NewFromUtf8Literal(isolate, "the result is longer than a string can be")));
    return;
  }
  if (out.ok) {
    info.GetReturnValue().Set(text);
  } else {
    isolate->ThrowException(v8::Exception::Error(text));
  }
}

// host.xml(op, arg, optionsJson) -> string, or throws Error(message)
void HostXml(const v8::FunctionCallbackInfo<v8::Value>& info) {
  isoflow_v8* self = Self(info);
  v8::Isolate* isolate = info.GetIsolate();
  if (self->host == nullptr || self->stopped.load()) return;
  int op = info[0]->IsInt32() ? info[0].As<v8::Int32>()->Value() : -1;
  // The prelude passes strings only; they are already in the heap, so
  // their UTF-8 is at most three times a bounded size.
  std::string arg = Utf8(isolate, info[1]);
  std::string options = Utf8(isolate, info[2]);
  Answer(info,
         self->host->xml(self->host->data, op, arg.data(), arg.size(), options.data(),
                         options.size()),
         "ctx.xml");
}

// host.test(name, arg) -> string (test programs only)
void HostTest(const v8::FunctionCallbackInfo<v8::Value>& info) {
  isoflow_v8* self = Self(info);
  v8::Isolate* isolate = info.GetIsolate();
  if (self->host == nullptr || self->stopped.load()) return;
  std::string name = Utf8(isolate, info[0]);
  std::string arg = Utf8(isolate, info[1]);
  Answer(info,
         self->host->test(self->host->data, name.data(), name.size(), arg.data(), arg.size()),
         "test hook");
}

// The sentence for any import, static or dynamic; the specifier is the
// step's own text, so only its start is quoted.
std::string ImportRefusal(v8::Isolate* isolate, v8::Local<v8::String> specifier) {
  size_t total = 0;
  std::string quoted = Utf8(isolate, specifier, 200, &total);
  if (total > quoted.size()) quoted += "…";
  return "steps cannot import modules (import of \"" + quoted +
         "\"): all I/O and libraries belong to engine actions";
}

v8::MaybeLocal<v8::Module> RefuseImport(v8::Local<v8::Context> context,
                                        v8::Local<v8::String> specifier,
                                        v8::Local<v8::FixedArray> import_assertions,
                                        v8::Local<v8::Module> referrer) {
  v8::Isolate* isolate = context->GetIsolate();
  Throw(isolate, ImportRefusal(isolate, specifier));
  return v8::MaybeLocal<v8::Module>();
}

// import() in a step: a rejected promise with the same sentence as a static import.
v8::MaybeLocal<v8::Promise> RefuseDynamicImport(v8::Local<v8::Context> context,
                                                v8::Local<v8::Data> host_defined_options,
                                                v8::Local<v8::Value> resource_name,
                                                v8::Local<v8::String> specifier,
                                                v8::Local<v8::FixedArray> import_assertions) {
  v8::Isolate* isolate = context->GetIsolate();
  v8::Local<v8::Promise::Resolver> resolver;
  if (!v8::Promise::Resolver::New(context).ToLocal(&resolver)) return {};
  std::string message = ImportRefusal(isolate, specifier);
  v8::Local<v8::String> text;
  if (!NewString(isolate, message.data(), message.size(), &text) ||
      resolver->Reject(context, v8::Exception::Error(text)).IsNothing()) {
    return {};
  }
  return resolver->GetPromise();
}

v8::MaybeLocal<v8::Script> CompilePrelude(v8::Isolate* isolate, v8::Local<v8::Context> context) {
  v8::ScriptOrigin origin(isolate, v8::String::NewFromUtf8Literal(isolate, kPreludeName));
  v8::Local<v8::String> code;
  if (!NewString(isolate, g_prelude->data(), g_prelude->size(), &code)) return {};
  if (g_prelude_cache == nullptr) {
    v8::ScriptCompiler::Source source(code, origin);
    return v8::ScriptCompiler::Compile(context, &source, v8::ScriptCompiler::kEagerCompile);
  }
  // The cache is shared read-only: Source does not own this copy of the pointer.
  auto* cached = new v8::ScriptCompiler::CachedData(
      g_prelude_cache->data, g_prelude_cache->length, v8::ScriptCompiler::CachedData::BufferNotOwned);
  v8::ScriptCompiler::Source source(code, origin, cached);
  return v8::ScriptCompiler::Compile(context, &source, v8::ScriptCompiler::kConsumeCodeCache);
}

// Compiles the prelude once, in the keeper isolate, and keeps its code cache.
void CachePrelude(v8::Isolate* isolate) {
  v8::Isolate::Scope isolate_scope(isolate);
  v8::HandleScope handle_scope(isolate);
  v8::Local<v8::Context> context = v8::Context::New(isolate);
  v8::Context::Scope context_scope(context);
  v8::Local<v8::Script> script;
  if (CompilePrelude(isolate, context).ToLocal(&script)) {
    g_prelude_cache = v8::ScriptCompiler::CreateCodeCache(script->GetUnboundScript());
  }
}

// Runs the prelude in a fresh context and keeps what it returns.
bool Prepare(isoflow_v8* self, std::string* error) {
  v8::Isolate* isolate = self->isolate;
  v8::Isolate::Scope isolate_scope(isolate);
  v8::HandleScope handle_scope(isolate);
  v8::Local<v8::Context> context = v8::Context::New(isolate);
  v8::Context::Scope context_scope(context);
  v8::TryCatch try_catch(isolate);

  v8::Local<v8::Script> script;
  v8::Local<v8::Value> prelude;
  if (!CompilePrelude(isolate, context).ToLocal(&script) ||
      !script->Run(context).ToLocal(&prelude) || !prelude->IsFunction()) {
    *error = "prelude failed";
    if (try_catch.HasCaught() && !try_catch.Exception().IsEmpty()) {
      v8::Local<v8::String> text;
      if (try_catch.Exception()->ToString(context).ToLocal(&text)) {
        *error += ": " + ErrorText(isolate, text);
      }
    }
    return false;
  }
  v8::Local<v8::External> data = v8::External::New(isolate, self);
  v8::Local<v8::Object> host = v8::Object::New(isolate);
  v8::Local<v8::Function> log;
  v8::Local<v8::Function> xml;
  if (!v8::Function::New(context, HostLog, data, 2).ToLocal(&log) ||
      !v8::Function::New(context, HostXml, data, 3).ToLocal(&xml) ||
      host->Set(context, v8::String::NewFromUtf8Literal(isolate, "log"), log).IsNothing() ||
      host->Set(context, v8::String::NewFromUtf8Literal(isolate, "xml"), xml).IsNothing()) {
    *error = "cannot build the host object";
    return false;
  }
  if (g_test_hooks) {
    v8::Local<v8::Function> test;
    if (!v8::Function::New(context, HostTest, data, 2).ToLocal(&test) ||
        host->Set(context, v8::String::NewFromUtf8Literal(isolate, "test"), test).IsNothing()) {
      *error = "cannot build the host object";
      return false;
    }
  }
  v8::Local<v8::Value> args[] = {host};
  v8::Local<v8::Value> entry;
  if (!prelude.As<v8::Function>()->Call(context, v8::Undefined(isolate), 1, args).ToLocal(&entry) ||
      !entry->IsObject()) {
    *error = "prelude failed when called";
    return false;
  }
  v8::Local<v8::Object> entries = entry.As<v8::Object>();
  v8::Local<v8::Value> ctx, parse_input, finish;
  if (!entries->Get(context, v8::String::NewFromUtf8Literal(isolate, "ctx")).ToLocal(&ctx) ||
      !entries->Get(context, v8::String::NewFromUtf8Literal(isolate, "parseInput"))
           .ToLocal(&parse_input) ||
      !entries->Get(context, v8::String::NewFromUtf8Literal(isolate, "finish"))
           .ToLocal(&finish) ||
      !parse_input->IsFunction() || !finish->IsFunction()) {
    *error = "prelude returned an unexpected value";
    return false;
  }
  self->context.Reset(isolate, context);
  self->ctx.Reset(isolate, ctx);
  self->parse_input.Reset(isolate, parse_input.As<v8::Function>());
  self->finish.Reset(isolate, finish.As<v8::Function>());
  return true;
}

// One step's run, with the scopes it needs and the error reporting helpers.
class Run {
 public:
  Run(isoflow_v8* self, const isoflow_v8_host* host, v8::Local<v8::Context> context,
      v8::TryCatch& try_catch, const std::string& filename)
      : self_(self),
        isolate_(self->isolate),
        host_(host),
        context_(context),
        try_catch_(try_catch),
        filename_(filename) {}

  // Once true, no JavaScript may be called in this isolate again.
  bool Stopped() const {
    return self_->heap_exceeded.load() || self_->stopped.load() || try_catch_.HasTerminated() ||
           isolate_->IsExecutionTerminating();
  }

  isoflow_v8_result Status(int status) const {
    if (Stopped()) {
      status = self_->heap_exceeded.load() ? ISOFLOW_V8_HEAP_LIMIT : ISOFLOW_V8_TERMINATED;
    }
    return isoflow_v8_result{status, line_, column_};
  }

  void Text(int field, const std::string& text) const {
    host_->text(host_->data, field, text.data(), text.size());
  }

  // A failure whose message is the caught exception's (for input and output
  // errors the position is meaningless).
  isoflow_v8_result Plain(int status) {
    if (!Stopped()) Text(ISOFLOW_V8_FIELD_MESSAGE, Describe(try_catch_.Exception()));
    return Status(status);
  }

  isoflow_v8_result Syntax() {
    if (Stopped()) return Status(ISOFLOW_V8_SYNTAX);
    v8::Local<v8::Message> message = try_catch_.Message();
    if (!message.IsEmpty()) {
      // Message::Get() says "Uncaught SyntaxError: ..."; the host adds its own words.
      std::string text = ErrorText(isolate_, message->Get());
      const std::string uncaught = "Uncaught ";
      if (text.compare(0, uncaught.size(), uncaught) == 0) text.erase(0, uncaught.size());
      Text(ISOFLOW_V8_FIELD_MESSAGE, text);
      line_ = message->GetLineNumber(context_).FromMaybe(0);
      column_ = message->GetStartColumn(context_).FromMaybe(-1) + 1;
    } else {
      Text(ISOFLOW_V8_FIELD_MESSAGE, Describe(try_catch_.Exception()));
    }
    return Status(ISOFLOW_V8_SYNTAX);
  }

  isoflow_v8_result Exception(v8::Local<v8::Value> exception) {
    if (Stopped()) return Status(ISOFLOW_V8_EXCEPTION);
    // The position first: it comes from the stack V8 captured when the
    // value was thrown, without running any of the step's code.
    Locate(exception);
    Text(ISOFLOW_V8_FIELD_MESSAGE, Describe(exception));
    // Reading `stack` may run the step's Error.prepareStackTrace: only while
    // the step still has time.
    if (exception->IsObject() && !Stopped()) {
      v8::TryCatch inner(isolate_);
      v8::Local<v8::Value> stack;
      if (exception.As<v8::Object>()
              ->Get(context_, v8::String::NewFromUtf8Literal(isolate_, "stack"))
              .ToLocal(&stack) &&
          stack->IsString() && !Stopped()) {
        Text(ISOFLOW_V8_FIELD_STACK, ErrorText(isolate_, stack.As<v8::String>()));
      }
    }
    return Status(ISOFLOW_V8_EXCEPTION);
  }

 private:
  // "Error: boom" for errors, the JSON text for other objects, the string
  // form for primitives. Never throws. Describing may run the step's code
  // (a `message` getter, a toJSON): it is charged to the step's time, and
  // after the step was stopped nothing is called and the value is named by
  // its type alone.
  std::string Describe(v8::Local<v8::Value> value) {
    if (value.IsEmpty()) return "unknown error";
    if (value->IsString()) return ErrorText(isolate_, value.As<v8::String>());
    if (value->IsSymbol()) {
      v8::Local<v8::Value> description = value.As<v8::Symbol>()->Description(isolate_);
      return "Symbol(" +
             (description->IsString() ? ErrorText(isolate_, description.As<v8::String>())
                                      : std::string()) +
             ")";
    }
    if (Stopped()) return Unread(value);
    v8::TryCatch inner(isolate_);
    v8::Local<v8::String> text;
    if (value->IsNativeError() || !value->IsObject() || value->IsFunction()) {
      if (value->ToString(context_).ToLocal(&text) && !Stopped()) {
        return ErrorText(isolate_, text);
      }
      return Unread(value);
    }
    if (v8::JSON::Stringify(context_, value).ToLocal(&text) && !Stopped()) {
      return ErrorText(isolate_, text);
    }
    return Stopped() ? Unread(value) : "unprintable object";
  }

  // A thrown value named without running any of its code.
  std::string Unread(v8::Local<v8::Value> value) {
    std::string kind = value->IsNativeError() ? "an Error"
                       : value->IsFunction()  ? "a function"
                       : value->IsObject()    ? "an object"
                                              : "a value";
    return kind + " (its text could not be read within the step's time)";
  }

  // The first stack frame in the step's own file, else the message's
  // position when it is in that file.
  void Locate(v8::Local<v8::Value> exception) {
    v8::Local<v8::Message> message = v8::Exception::CreateMessage(isolate_, exception);
    if (message.IsEmpty()) return;
    v8::Local<v8::StackTrace> trace = message->GetStackTrace();
    if (!trace.IsEmpty()) {
      for (int i = 0; i < trace->GetFrameCount(); i++) {
        v8::Local<v8::StackFrame> frame = trace->GetFrame(isolate_, i);
        if (Utf8(isolate_, frame->GetScriptName()) == filename_) {
          line_ = frame->GetLineNumber();
          column_ = frame->GetColumn();
          return;
        }
      }
    }
    if (Utf8(isolate_, message->GetScriptResourceName()) == filename_) {
      line_ = message->GetLineNumber(context_).FromMaybe(0);
      column_ = message->GetStartColumn(context_).FromMaybe(-1) + 1;
    }
  }

  isoflow_v8* self_;
  v8::Isolate* isolate_;
  const isoflow_v8_host* host_;
  v8::Local<v8::Context> context_;
  v8::TryCatch& try_catch_;
  std::string filename_;
  int line_ = 0;
  int column_ = 0;
};

}  // namespace

extern "C" int isoflow_v8_init(const isoflow_v8_options* options, char* error, size_t error_len) {
  static std::once_flag once;
  static std::string failure;
  std::call_once(once, [&] {
    g_prelude = new std::string(options->prelude, options->prelude_len);
    g_max_log_line = options->max_log_line;
    g_max_error_text = options->max_error_text;
    g_test_hooks = options->test_hooks != 0;
    v8::V8::SetFlagsFromString(options->flags);
    v8::V8::SetEntropySource(Entropy);
    g_platform = v8::platform::NewDefaultPlatform().release();
    v8::V8::InitializePlatform(g_platform);
    if (!v8::V8::Initialize()) {
      failure = "V8 failed to initialise";
      return;
    }
    g_keeper_allocator = v8::ArrayBuffer::Allocator::NewDefaultAllocator();
    v8::Isolate::CreateParams params;
    params.array_buffer_allocator = g_keeper_allocator;
    g_keeper = v8::Isolate::New(params);
    if (g_keeper == nullptr) {
      failure = "V8 could not create an isolate";
      return;
    }
    g_keeper->SetFatalErrorHandler(FatalError);
    g_keeper->SetOOMErrorHandler(OnFatalOutOfMemory);
    CachePrelude(g_keeper);
  });
  if (!failure.empty()) {
    write_error(error, error_len, failure);
    return 1;
  }
  return 0;
}

extern "C" isoflow_v8* isoflow_v8_new(size_t heap_limit, char* error, size_t error_len) {
  auto* self = new isoflow_v8();
  self->heap_limit = heap_limit;
  self->thread = pthread_self();
  self->allocator = new BudgetAllocator(heap_limit, self);
  v8::Isolate::CreateParams params;
  params.array_buffer_allocator = self->allocator;
  params.constraints.ConfigureDefaultsFromHeapSize(0, heap_limit);
  // Atomics.wait would block the thread where the watchdog cannot reach it.
  params.allow_atomics_wait = false;
  self->isolate = v8::Isolate::New(params);
  if (self->isolate == nullptr) {
    write_error(error, error_len, "V8 could not create an isolate");
    delete self->allocator;
    delete self;
    return nullptr;
  }
  self->isolate->SetFatalErrorHandler(FatalError);
  self->isolate->SetOOMErrorHandler(OnFatalOutOfMemory);
  self->isolate->SetMicrotasksPolicy(v8::MicrotasksPolicy::kExplicit);
  self->isolate->AddNearHeapLimitCallback(NearHeapLimit, self);
  self->isolate->SetHostImportModuleDynamicallyCallback(RefuseDynamicImport);
  std::string message;
  if (!Prepare(self, &message)) {
    write_error(error, error_len, message);
    isoflow_v8_dispose(self);
    return nullptr;
  }
  // Only now, for the step's errors: set before Prepare, the prelude's own
  // `new Error()` (its call-site probe) would capture a detailed trace,
  // which makes V8 reparse the whole prelude for its source positions in
  // every fresh isolate (measured: a quarter of a bare fresh isolate's CPU).
  self->isolate->SetCaptureStackTraceForUncaughtExceptions(true, 32);
  return self;
}

extern "C" isoflow_v8_result isoflow_v8_run(isoflow_v8* self, const isoflow_v8_host* host,
                                            const char* source, size_t source_len,
                                            const char* filename, size_t filename_len,
                                            const char* input, size_t input_len,
                                            const char* cache, size_t cache_len) {
  v8::Isolate* isolate = self->isolate;
  self->host = host;
  v8::Isolate::Scope isolate_scope(isolate);
  v8::HandleScope handle_scope(isolate);
  v8::Local<v8::Context> context = self->context.Get(isolate);
  v8::Context::Scope context_scope(context);
  v8::TryCatch try_catch(isolate);
  std::string name(filename, filename_len);
  Run run(self, host, context, try_catch, name);

  // The input. V8 strings hold at most ~2^29 characters.
  v8::Local<v8::String> input_text;
  if (!NewString(isolate, input, input_len, &input_text)) {
    if (run.Stopped()) return run.Status(ISOFLOW_V8_INPUT);
    run.Text(ISOFLOW_V8_FIELD_MESSAGE,
             "input of " + std::to_string(input_len) + " bytes is larger than a V8 string can be");
    return run.Status(ISOFLOW_V8_INPUT);
  }
  host->input_consumed(host->data);
  input = nullptr;
  v8::Local<v8::Value> parse_args[] = {input_text};
  v8::Local<v8::Value> value;
  if (!self->parse_input.Get(isolate)
           ->Call(context, v8::Undefined(isolate), 1, parse_args)
           .ToLocal(&value)) {
    return run.Plain(ISOFLOW_V8_INPUT);
  }

  // The module.
  v8::Local<v8::String> code;
  if (!NewString(isolate, source, source_len, &code)) {
    run.Text(ISOFLOW_V8_FIELD_MESSAGE, "step source is larger than a V8 string can be");
    return run.Status(ISOFLOW_V8_MODULE);
  }
  v8::Local<v8::String> resource;
  if (!NewString(isolate, filename, filename_len, &resource)) {
    run.Text(ISOFLOW_V8_FIELD_MESSAGE, "step file name is larger than a V8 string can be");
    return run.Status(ISOFLOW_V8_MODULE);
  }
  v8::ScriptOrigin origin(isolate, resource, 0, 0, false, -1, v8::Local<v8::Value>(), false,
                          false, /*is_module=*/true);
  // A code cache skips parsing and compiling; Source owns the CachedData
  // struct but not the host's bytes.
  v8::ScriptCompiler::CachedData* cached =
      cache == nullptr || cache_len > static_cast<size_t>(INT_MAX)
          ? nullptr
          : new v8::ScriptCompiler::CachedData(reinterpret_cast<const uint8_t*>(cache),
                                               static_cast<int>(cache_len),
                                               v8::ScriptCompiler::CachedData::BufferNotOwned);
  v8::ScriptCompiler::Source compile_source(code, origin, cached);
  v8::Local<v8::Module> module;
  if (!v8::ScriptCompiler::CompileModule(isolate, &compile_source,
                                         cached == nullptr
                                             ? v8::ScriptCompiler::kNoCompileOptions
                                             : v8::ScriptCompiler::kConsumeCodeCache)
           .ToLocal(&module)) {
    return run.Syntax();
  }
  bool offer_cache = cached == nullptr || cached->rejected;
  if (!module->InstantiateModule(context, RefuseImport).FromMaybe(false)) {
    return run.Plain(ISOFLOW_V8_MODULE);
  }
  v8::Local<v8::Value> evaluated;
  if (!module->Evaluate(context).ToLocal(&evaluated)) {
    return run.Exception(try_catch.Exception());
  }
  // Top-level await: evaluation returns a promise settled by microtasks.
  if (!run.Stopped()) isolate->PerformMicrotaskCheckpoint();
  if (run.Stopped()) return run.Status(ISOFLOW_V8_TERMINATED);
  if (module->GetStatus() == v8::Module::kErrored) return run.Exception(module->GetException());
  if (evaluated->IsPromise() &&
      evaluated.As<v8::Promise>()->State() == v8::Promise::kPending) {
    return run.Status(ISOFLOW_V8_NEVER_SETTLED);
  }
  v8::Local<v8::Value> entry;
  if (!module->GetModuleNamespace()
           .As<v8::Object>()
           ->Get(context, v8::String::NewFromUtf8Literal(isolate, "default"))
           .ToLocal(&entry)) {
    return run.Exception(try_catch.Exception());
  }
  if (!entry->IsFunction()) {
    std::string message =
        entry->IsUndefined()
            ? "the step's module has no default export"
            : "the step's default export is " +
                  std::string(entry->IsNull() ? "null" : Utf8(isolate, entry->TypeOf(isolate))) +
                  ", not a function";
    run.Text(ISOFLOW_V8_FIELD_MESSAGE,
             message + "; write `export default function (input, ctx) { ... }`");
    return run.Status(ISOFLOW_V8_MODULE);
  }

  // The call.
  v8::Local<v8::Value> call_args[] = {value, self->ctx.Get(isolate)};
  v8::Local<v8::Value> result;
  if (!entry.As<v8::Function>()
           ->Call(context, v8::Undefined(isolate), 2, call_args)
           .ToLocal(&result)) {
    return run.Exception(try_catch.Exception());
  }
  if (!run.Stopped()) isolate->PerformMicrotaskCheckpoint();
  if (run.Stopped()) return run.Status(ISOFLOW_V8_TERMINATED);
  if (result->IsPromise()) {
    v8::Local<v8::Promise> promise = result.As<v8::Promise>();
    switch (promise->State()) {
      case v8::Promise::kPending:
        return run.Status(ISOFLOW_V8_NEVER_SETTLED);
      case v8::Promise::kRejected:
        return run.Exception(promise->Result());
      case v8::Promise::kFulfilled:
        result = promise->Result();
        break;
    }
  }

  // The output.
  v8::Local<v8::Value> finish_args[] = {result};
  v8::Local<v8::Value> json;
  if (!self->finish.Get(isolate)
           ->Call(context, v8::Undefined(isolate), 1, finish_args)
           .ToLocal(&json) ||
      !json->IsString()) {
    return run.Plain(ISOFLOW_V8_NOT_SERIALIZABLE);
  }
  if (run.Stopped()) return run.Status(ISOFLOW_V8_TERMINATED);
  v8::Local<v8::String> text = json.As<v8::String>();
  int utf8_length = text->Utf8Length(isolate);
  size_t len = static_cast<size_t>(std::max(utf8_length, 0));
  char* buffer = host->output(host->data, len);
  if (buffer == nullptr) return run.Status(ISOFLOW_V8_OUTPUT_LIMIT);
  if (len > 0) {
    text->WriteUtf8(isolate, buffer, utf8_length, nullptr,
                    v8::String::NO_NULL_TERMINATION | v8::String::REPLACE_INVALID_UTF8);
  }
  if (offer_cache) {
    // Made after the run, so it holds the functions the step really called.
    std::unique_ptr<v8::ScriptCompiler::CachedData> made(
        v8::ScriptCompiler::CreateCodeCache(module->GetUnboundModuleScript()));
    if (made != nullptr && made->length > 0) {
      host->code_cache(host->data, reinterpret_cast<const char*>(made->data),
                       static_cast<size_t>(made->length));
    }
  }
  return run.Status(ISOFLOW_V8_OK);
}

extern "C" void isoflow_v8_terminate(isoflow_v8* self) {
  self->stopped.store(true);
  self->isolate->TerminateExecution();
}

extern "C" void isoflow_v8_dispose(isoflow_v8* self) {
  v8::Isolate* isolate = self->isolate;
  self->finish.Reset();
  self->parse_input.Reset();
  self->ctx.Reset();
  self->context.Reset();
  isolate->Dispose();
  v8::platform::NotifyIsolateShutdown(g_platform, isolate);
  delete self->allocator;
  delete self;
}
