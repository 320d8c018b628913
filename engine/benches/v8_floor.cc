// The floor under every fresh-isolate step on this machine: bare V8
// (Debian's libnode108) creating an isolate and a context, running `1+1`
// and disposing of it, with no Isoflow code involved. Compare with the
// "back to back" figure of `cargo bench --bench sandbox`.
//
// Run: engine/benches/v8_floor.sh
#include <libplatform/libplatform.h>
#include <v8.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
  int iterations = argc > 1 ? std::atoi(argv[1]) : 2000;
  v8::V8::SetFlagsFromString("--no-verify-snapshot-checksum");
  std::unique_ptr<v8::Platform> platform = v8::platform::NewDefaultPlatform();
  v8::V8::InitializePlatform(platform.get());
  v8::V8::Initialize();
  v8::Isolate::CreateParams params;
  params.array_buffer_allocator = v8::ArrayBuffer::Allocator::NewDefaultAllocator();
  // Same as the sandbox: one idle isolate keeps the shared read-only heap.
  v8::Isolate* keeper = v8::Isolate::New(params);
  (void)keeper;

  using clock = std::chrono::steady_clock;
  double isolate = 0, context = 0, run = 0, dispose = 0;
  auto seconds = [](clock::time_point a, clock::time_point b) {
    return std::chrono::duration<double>(b - a).count();
  };
  auto start = clock::now();
  for (int i = 0; i < iterations; i++) {
    auto t0 = clock::now();
    v8::Isolate* iso = v8::Isolate::New(params);
    auto t1 = clock::now();
    auto t2 = t1, t3 = t1;
    {
      v8::Isolate::Scope isolate_scope(iso);
      v8::HandleScope handle_scope(iso);
      v8::Local<v8::Context> ctx = v8::Context::New(iso);
      t2 = clock::now();
      v8::Context::Scope context_scope(ctx);
      v8::Local<v8::Script> script =
          v8::Script::Compile(ctx, v8::String::NewFromUtf8Literal(iso, "1+1")).ToLocalChecked();
      script->Run(ctx).ToLocalChecked();
      t3 = clock::now();
    }
    iso->Dispose();
    v8::platform::NotifyIsolateShutdown(platform.get(), iso);
    auto t4 = clock::now();
    isolate += seconds(t0, t1);
    context += seconds(t1, t2);
    run += seconds(t2, t3);
    dispose += seconds(t3, t4);
  }
  double total = seconds(start, clock::now());
  std::printf(
      "bare V8, %d fresh isolates on 1 thread: %.3f ms each (isolate %.3f, context %.3f, "
      "run %.3f, dispose %.3f) = %.0f/s per core\n",
      iterations, total / iterations * 1e3, isolate / iterations * 1e3,
      context / iterations * 1e3, run / iterations * 1e3, dispose / iterations * 1e3,
      iterations / total);
  return 0;
}
