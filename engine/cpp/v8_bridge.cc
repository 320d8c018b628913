// Isoflow's bridge to V8 10.2 (Debian's libnode108). See v8_bridge.h for the
// ABI and its threading rules.
//
// Every isolate made here is used for one step at most: isoflow_v8_new builds
// it (isolate, context, prelude) before a step arrives, isoflow_v8_run runs
// the step, isoflow_v8_dispose throws it away. Nothing a step does to its
// built-ins can therefore reach another step.
//
// Limits enforced here: the heap (a near-heap-limit callback that terminates
// the step and grants headroom so V8 can unwind instead of aborting the
// process) and ArrayBuffer memory (an allocator with a byte budget, because
// backing stores live outside the V8 heap). Time is enforced by the host's
// watchdog through isoflow_v8_terminate.

#include "v8_bridge.h"

#include <libplatform/libplatform.h>
#include <v8.h>

#include <csetjmp>
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>

namespace {

// Process-wide state is deliberately leaked: sandbox threads may still be
// creating or disposing isolates while the process exits, and static
// destructors must not pull the platform out from under them.
v8::Platform* g_platform = nullptr;
const std::string* g_prelude = nullptr;
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

// ArrayBuffer backing stores with a byte budget. V8 may free backing stores
// from its background threads, hence the atomic counter.
class BudgetAllocator final : public v8::ArrayBuffer::Allocator {
 public:
  explicit BudgetAllocator(size_t budget) : budget_(budget) {}

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
  bool Reserve(size_t length) {
    size_t used = used_.load(std::memory_order_relaxed);
    do {
      if (length > budget_ - used) return false;
    } while (!used_.compare_exchange_weak(used, used + length, std::memory_order_relaxed));
    return true;
  }

  void Release(size_t length) { used_.fetch_sub(length, std::memory_order_relaxed); }

  const size_t budget_;
  std::atomic<size_t> used_{0};
};

}  // namespace

struct isoflow_v8 {
  v8::Isolate* isolate = nullptr;
  // Set when V8 gave up on the isolate with a fatal out-of-memory error and
  // the step was abandoned (see OnFatalOutOfMemory): it is never touched or
  // disposed again.
  bool abandoned = false;
  BudgetAllocator* allocator = nullptr;
  v8::Global<v8::Context> context;
  v8::Global<v8::Value> ctx;
  v8::Global<v8::Function> parse_input;
  v8::Global<v8::Function> finish;
  const isoflow_v8_host* host = nullptr;
  std::atomic<bool> heap_exceeded{false};
  bool host_stopped = false;
};

namespace {

size_t NearHeapLimit(void* data, size_t current_limit, size_t initial_limit) {
  auto* self = static_cast<isoflow_v8*>(data);
  self->heap_exceeded.store(true);
  self->isolate->TerminateExecution();
  // Headroom for V8 to reach the termination point instead of aborting the
  // process with "JavaScript heap out of memory". It must fit the largest
  // single object V8 can allocate (about 1 GiB: a maximal string or array),
  // because one oversized allocation is retried once after this callback and
  // is fatal if it still does not fit. The memory is only used if the step
  // really allocates it, and the isolate is disposed right after the step.
  return current_limit + (size_t{1} << 30) + initial_limit;
}

// Where a fatal out-of-memory error escapes to: set only while this thread
// is inside isoflow_v8_run.
thread_local sigjmp_buf* t_escape = nullptr;
thread_local const char* t_oom_location = nullptr;

// V8 reports a few allocation failures as fatal, whatever the heap limit
// callback says: a hash table past its maximum capacity ("invalid table
// size", e.g. `new Array(1e9).fill(0)` fills a dictionary inside a C++
// builtin that never checks for termination), or an allocation that still
// does not fit after the callback. V8 calls this handler and aborts the
// process if it returns. Instead, the step's run jumps back to its entry
// point and the isolate is abandoned: never run, entered or disposed again,
// its memory leaked. No V8 frames are resumed and no other isolate is
// involved, so the rest of the process carries on.
void OnFatalOutOfMemory(const char* location, bool is_heap_oom) {
  if (t_escape == nullptr) {
    std::fprintf(stderr, "isoflow: fatal V8 out of memory in %s outside a step\n", location);
    std::abort();
  }
  t_oom_location = location;
  siglongjmp(*t_escape, 1);
}

void FatalError(const char* location, const char* message) {
  std::fprintf(stderr, "isoflow: fatal V8 error in %s: %s\n", location, message);
  std::abort();
}

v8::Local<v8::String> Str(v8::Isolate* isolate, const char* data, size_t len) {
  return v8::String::NewFromUtf8(isolate, data, v8::NewStringType::kNormal,
                                 static_cast<int>(len))
      .ToLocalChecked();
}

// UTF-8 with every lone surrogate replaced by U+FFFD (String::Utf8Value
// would write it as three bytes that are not UTF-8).
std::string ToUtf8(v8::Isolate* isolate, v8::Local<v8::Value> value) {
  v8::Local<v8::String> text;
  if (value.IsEmpty() || !value->ToString(isolate->GetCurrentContext()).ToLocal(&text)) {
    return std::string();
  }
  std::string out(static_cast<size_t>(text->Utf8Length(isolate)), '\0');
  text->WriteUtf8(isolate, out.data(), static_cast<int>(out.size()), nullptr,
                  v8::String::NO_NULL_TERMINATION | v8::String::REPLACE_INVALID_UTF8);
  return out;
}

isoflow_v8* Self(const v8::FunctionCallbackInfo<v8::Value>& info) {
  return static_cast<isoflow_v8*>(info.Data().As<v8::External>()->Value());
}

// host.log(level, text)
void HostLog(const v8::FunctionCallbackInfo<v8::Value>& info) {
  isoflow_v8* self = Self(info);
  v8::Isolate* isolate = info.GetIsolate();
  if (self->host == nullptr || self->host_stopped) return;
  int level = info[0]->Int32Value(isolate->GetCurrentContext()).FromMaybe(1);
  std::string text = ToUtf8(isolate, info[1]);
  if (self->host->log(self->host->data, level, text.data(), text.size()) == 0) {
    self->host_stopped = true;
    isolate->TerminateExecution();
  }
}

// host.xml(op, arg, optionsJson) -> string, or throws Error(message)
void HostXml(const v8::FunctionCallbackInfo<v8::Value>& info) {
  isoflow_v8* self = Self(info);
  v8::Isolate* isolate = info.GetIsolate();
  if (self->host == nullptr) return;
  int op = info[0]->Int32Value(isolate->GetCurrentContext()).FromMaybe(-1);
  std::string arg = ToUtf8(isolate, info[1]);
  std::string options = ToUtf8(isolate, info[2]);
  isoflow_v8_slice out =
      self->host->xml(self->host->data, op, arg.data(), arg.size(), options.data(), options.size());
  v8::Local<v8::String> text;
  if (!v8::String::NewFromUtf8(isolate, out.ptr, v8::NewStringType::kNormal,
                               static_cast<int>(out.len))
           .ToLocal(&text)) {
    isolate->ThrowException(v8::Exception::RangeError(
        v8::String::NewFromUtf8Literal(isolate, "ctx.xml: result is too large for a string")));
    return;
  }
  if (out.ok) {
    info.GetReturnValue().Set(text);
  } else {
    isolate->ThrowException(v8::Exception::Error(text));
  }
}

v8::MaybeLocal<v8::Module> RefuseImport(v8::Local<v8::Context> context,
                                        v8::Local<v8::String> specifier,
                                        v8::Local<v8::FixedArray> import_assertions,
                                        v8::Local<v8::Module> referrer) {
  v8::Isolate* isolate = context->GetIsolate();
  std::string message = "steps cannot import modules (import of \"" + ToUtf8(isolate, specifier) +
                        "\"): all I/O and libraries belong to engine actions";
  isolate->ThrowException(v8::Exception::Error(Str(isolate, message.data(), message.size())));
  return v8::MaybeLocal<v8::Module>();
}

v8::MaybeLocal<v8::Script> CompilePrelude(v8::Isolate* isolate, v8::Local<v8::Context> context) {
  v8::ScriptOrigin origin(isolate, v8::String::NewFromUtf8Literal(isolate, kPreludeName));
  v8::Local<v8::String> code = Str(isolate, g_prelude->data(), g_prelude->size());
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

// import() in a step: a rejected promise with the same sentence as a static import.
v8::MaybeLocal<v8::Promise> RefuseDynamicImport(v8::Local<v8::Context> context,
                                                v8::Local<v8::Data> host_defined_options,
                                                v8::Local<v8::Value> resource_name,
                                                v8::Local<v8::String> specifier,
                                                v8::Local<v8::FixedArray> import_assertions) {
  v8::Isolate* isolate = context->GetIsolate();
  v8::Local<v8::Promise::Resolver> resolver;
  if (!v8::Promise::Resolver::New(context).ToLocal(&resolver)) return {};
  std::string message = "steps cannot import modules (import of \"" + ToUtf8(isolate, specifier) +
                        "\"): all I/O and libraries belong to engine actions";
  if (resolver
          ->Reject(context, v8::Exception::Error(Str(isolate, message.data(), message.size())))
          .IsNothing()) {
    return {};
  }
  return resolver->GetPromise();
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
    *error = "prelude failed: " + ToUtf8(isolate, try_catch.Exception());
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
  v8::Local<v8::Value> args[] = {host};
  v8::Local<v8::Value> entry;
  if (!prelude.As<v8::Function>()->Call(context, v8::Undefined(isolate), 1, args).ToLocal(&entry) ||
      !entry->IsObject()) {
    *error = "prelude failed: " + ToUtf8(isolate, try_catch.Exception());
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

  bool Stopped() const {
    return self_->heap_exceeded.load() || self_->host_stopped || try_catch_.HasTerminated() ||
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
      std::string text = ToUtf8(isolate_, message->Get());
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
    Text(ISOFLOW_V8_FIELD_MESSAGE, Describe(exception));
    if (exception->IsObject()) {
      v8::TryCatch inner(isolate_);
      v8::Local<v8::Value> stack;
      if (exception.As<v8::Object>()
              ->Get(context_, v8::String::NewFromUtf8Literal(isolate_, "stack"))
              .ToLocal(&stack) &&
          stack->IsString()) {
        Text(ISOFLOW_V8_FIELD_STACK, ToUtf8(isolate_, stack));
      }
    }
    Locate(exception);
    return Status(ISOFLOW_V8_EXCEPTION);
  }

 private:
  // "Error: boom" for errors, the JSON text for other objects, the string
  // form for primitives. Never throws.
  std::string Describe(v8::Local<v8::Value> value) {
    if (value.IsEmpty()) return "unknown error";
    v8::TryCatch inner(isolate_);
    if (value->IsNativeError() || !value->IsObject() || value->IsFunction()) {
      v8::Local<v8::String> text;
      if (!value->IsSymbol() && value->ToString(context_).ToLocal(&text)) {
        return ToUtf8(isolate_, text);
      }
      if (value->IsSymbol()) {
        return "Symbol(" + ToUtf8(isolate_, value.As<v8::Symbol>()->Description(isolate_)) + ")";
      }
      return "unprintable value";
    }
    v8::Local<v8::String> json;
    if (v8::JSON::Stringify(context_, value).ToLocal(&json)) return ToUtf8(isolate_, json);
    return "unprintable object";
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
        if (ToUtf8(isolate_, frame->GetScriptName()) == filename_) {
          line_ = frame->GetLineNumber();
          column_ = frame->GetColumn();
          return;
        }
      }
    }
    if (ToUtf8(isolate_, message->GetScriptResourceName()) == filename_) {
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

extern "C" int isoflow_v8_init(const char* flags, const char* prelude, size_t prelude_len,
                               char* error, size_t error_len) {
  static std::once_flag once;
  static std::string failure;
  std::call_once(once, [&] {
    g_prelude = new std::string(prelude, prelude_len);
    v8::V8::SetFlagsFromString(flags);
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
  self->allocator = new BudgetAllocator(heap_limit);
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
  self->isolate->SetCaptureStackTraceForUncaughtExceptions(true, 32);
  self->isolate->AddNearHeapLimitCallback(NearHeapLimit, self);
  self->isolate->SetHostImportModuleDynamicallyCallback(RefuseDynamicImport);
  std::string message;
  if (!Prepare(self, &message)) {
    write_error(error, error_len, message);
    isoflow_v8_dispose(self);
    return nullptr;
  }
  return self;
}

namespace {

__attribute__((noinline)) isoflow_v8_result RunStep(isoflow_v8* self, const isoflow_v8_host* host,
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
  if (!v8::String::NewFromUtf8(isolate, input, v8::NewStringType::kNormal,
                               static_cast<int>(std::min<size_t>(input_len, INT32_MAX)))
           .ToLocal(&input_text) ||
      input_len > INT32_MAX) {
    run.Text(ISOFLOW_V8_FIELD_MESSAGE,
             "input of " + std::to_string(input_len) + " bytes is larger than a V8 string can be");
    return run.Status(ISOFLOW_V8_INPUT);
  }
  v8::Local<v8::Value> parse_args[] = {input_text};
  v8::Local<v8::Value> value;
  if (!self->parse_input.Get(isolate)
           ->Call(context, v8::Undefined(isolate), 1, parse_args)
           .ToLocal(&value)) {
    return run.Plain(ISOFLOW_V8_INPUT);
  }

  // The module.
  v8::Local<v8::String> code;
  if (!v8::String::NewFromUtf8(isolate, source, v8::NewStringType::kNormal,
                               static_cast<int>(std::min<size_t>(source_len, INT32_MAX)))
           .ToLocal(&code)) {
    run.Text(ISOFLOW_V8_FIELD_MESSAGE, "step source is larger than a V8 string can be");
    return run.Status(ISOFLOW_V8_MODULE);
  }
  v8::ScriptOrigin origin(isolate, Str(isolate, filename, filename_len), 0, 0, false, -1,
                          v8::Local<v8::Value>(), false, false, /*is_module=*/true);
  // A code cache skips parsing and compiling; Source owns the CachedData
  // struct but not the host's bytes.
  v8::ScriptCompiler::CachedData* cached =
      cache == nullptr ? nullptr
                       : new v8::ScriptCompiler::CachedData(
                             reinterpret_cast<const uint8_t*>(cache), static_cast<int>(cache_len),
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
  isolate->PerformMicrotaskCheckpoint();
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
                  std::string(entry->IsNull() ? "null" : ToUtf8(isolate, entry->TypeOf(isolate))) +
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
  isolate->PerformMicrotaskCheckpoint();
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
  v8::Local<v8::String> text = json.As<v8::String>();
  size_t len = static_cast<size_t>(text->Utf8Length(isolate));
  char* buffer = host->output(host->data, len);
  if (buffer == nullptr) return run.Status(ISOFLOW_V8_OUTPUT_LIMIT);
  if (len > 0) {
    text->WriteUtf8(isolate, buffer, static_cast<int>(len), nullptr,
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

}  // namespace

extern "C" isoflow_v8_result isoflow_v8_run(isoflow_v8* self, const isoflow_v8_host* host,
                                            const char* source, size_t source_len,
                                            const char* filename, size_t filename_len,
                                            const char* input, size_t input_len,
                                            const char* cache, size_t cache_len) {
  // Nothing set between sigsetjmp and a jump back is read afterwards except
  // through `self`, which does not change.
  sigjmp_buf escape;
  if (sigsetjmp(escape, 0) != 0) {
    t_escape = nullptr;
    self->abandoned = true;
    std::string location = t_oom_location == nullptr ? "V8" : t_oom_location;
    std::string message = "V8 ran out of memory in " + location;
    host->text(host->data, ISOFLOW_V8_FIELD_MESSAGE, message.data(), message.size());
    return isoflow_v8_result{ISOFLOW_V8_FATAL_OOM, 0, 0};
  }
  t_escape = &escape;
  isoflow_v8_result result =
      RunStep(self, host, source, source_len, filename, filename_len, input, input_len, cache,
              cache_len);
  t_escape = nullptr;
  return result;
}

extern "C" void isoflow_v8_terminate(isoflow_v8* self) { self->isolate->TerminateExecution(); }

extern "C" void isoflow_v8_dispose(isoflow_v8* self) {
  // An abandoned isolate is still entered, with handle scopes open: leaked.
  if (self->abandoned) return;
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
