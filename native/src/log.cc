// Routes libbpf's print callback to a JS function. libbpf prints synchronously from the calls we
// make on the JS thread (open, load, attach), so calling into JS from here is safe.
#include <stdarg.h>
#include <stdio.h>

#include "common.h"

namespace kernmesh {

namespace {

// Leaked on purpose: a static Reference would be destroyed after the Node environment is gone.
Napi::FunctionReference* g_sink = nullptr;
WarningCapture* g_capture = nullptr;

const char* LevelName(libbpf_print_level level) {
  switch (level) {
    case LIBBPF_WARN: return "warn";
    case LIBBPF_INFO: return "info";
    default: return "debug";
  }
}

int Print(libbpf_print_level level, const char* fmt, va_list ap) {
  char small[512];
  va_list copy;
  va_copy(copy, ap);
  int n = vsnprintf(small, sizeof small, fmt, copy);
  va_end(copy);
  if (n < 0) return 0;
  std::string msg;
  if (static_cast<size_t>(n) < sizeof small) {
    msg.assign(small, n);
  } else {
    // Verifier logs come through here and can be long.
    msg.resize(n + 1);
    vsnprintf(&msg[0], msg.size(), fmt, ap);
    msg.resize(n);
  }
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  if (msg.rfind("libbpf: ", 0) == 0) msg.erase(0, 8);
  if (msg.empty()) return 0;
  if (level == LIBBPF_WARN) AppendWarning(msg);

  if (g_sink && !g_sink->IsEmpty()) {
    Napi::Env env = g_sink->Env();
    Napi::HandleScope scope(env);
    try {
      g_sink->Call({Napi::String::New(env, LevelName(level)), Napi::String::New(env, msg)});
    } catch (const Napi::Error&) {
      // A throwing logger must not unwind through libbpf's C frames; the message is dropped.
    }
  } else if (level == LIBBPF_WARN) {
    fprintf(stderr, "libbpf: %s\n", msg.c_str());
  }
  return 0;
}

}  // namespace

void AppendWarning(const std::string& line) {
  if (g_capture) g_capture->lines_.push_back(line);
}

WarningCapture::WarningCapture() : prev_(g_capture) { g_capture = this; }
WarningCapture::~WarningCapture() { g_capture = prev_; }

// The first warnings usually name the failing program or map; verifier logs are left to the logger.
std::string WarningCapture::Summary() const {
  std::string out;
  int taken = 0;
  for (const auto& l : lines_) {
    if (l.find('\n') != std::string::npos) continue;
    if (taken++ == 3) break;
    if (!out.empty()) out += "; ";
    out += l;
  }
  return out;
}

void InstallLibbpfPrint() { libbpf_set_print(Print); }

// setLogSink(fn | undefined): fn(level, message) receives every libbpf message from now on.
Napi::Value SetLogSink(const Napi::CallbackInfo& info) {
  if (!g_sink) g_sink = new Napi::FunctionReference();
  if (info.Length() > 0 && info[0].IsFunction()) {
    *g_sink = Napi::Persistent(info[0].As<Napi::Function>());
  } else {
    g_sink->Reset();
  }
  return info.Env().Undefined();
}

}  // namespace kernmesh
