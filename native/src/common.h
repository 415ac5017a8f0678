// Shared declarations of the kernmesh libbpf addon. Everything runs on the JS thread: libbpf is
// only ever called from a JS call or from a uv callback of the same loop, never from another thread.
#pragma once

#include <napi.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <memory>
#include <string>
#include <vector>

namespace kernmesh {

// What an error is about: it names the map, program, object or link in the message and the fields.
struct Subject {
  enum Kind { kNone, kMap, kProgram, kObject, kLink, kPath } kind = kNone;
  std::string name;
};

inline Subject MapSubject(const std::string& n) { return {Subject::kMap, n}; }
inline Subject ProgramSubject(const std::string& n) { return {Subject::kProgram, n}; }
inline Subject ObjectSubject(const std::string& n) { return {Subject::kObject, n}; }
inline Subject LinkSubject(const std::string& n) { return {Subject::kLink, n}; }
inline Subject PathSubject(const std::string& n) { return {Subject::kPath, n}; }

// Builds a Node-style error: `<syscall> <name>: <CODE> (<strerror>)[: detail]` with code, errno,
// syscall and map/program/object fields. err is a positive errno.
Napi::Error BpfError(Napi::Env env, int err, const char* syscall, const Subject& subject,
                     const std::string& detail = "");
const char* ErrnoName(int err);

// libbpf's print callback goes to a JS function set here (or, without one, warnings to stderr).
void InstallLibbpfPrint();
Napi::Value SetLogSink(const Napi::CallbackInfo& info);
void AppendWarning(const std::string& line);
// Collects libbpf warnings while alive, so a failed load can say why.
class WarningCapture {
 public:
  WarningCapture();
  ~WarningCapture();
  const std::vector<std::string>& lines() const { return lines_; }
  std::string Summary() const;

 private:
  std::vector<std::string> lines_;
  WarningCapture* prev_;
  friend void AppendWarning(const std::string&);
};

// The libbpf object shared by a BpfObject and the maps and programs taken from it; closing it
// invalidates them all at once (their fds belong to the object).
struct ObjectCore {
  bpf_object* obj = nullptr;
  std::string name;
  ~ObjectCore();
  void Close();
};

struct AddonData {
  Napi::FunctionReference object_ctor, map_ctor, program_ctor, link_ctor, ringbuf_ctor;
};

inline AddonData* Data(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

Napi::Function InitObject(Napi::Env env);
Napi::Function InitMap(Napi::Env env);
Napi::Function InitProgram(Napi::Env env);
Napi::Function InitLink(Napi::Env env);
Napi::Function InitRingBuffer(Napi::Env env);

// Creates map / program handles for members of a loaded object.
Napi::Object NewObjectMap(Napi::Env env, std::shared_ptr<ObjectCore> core, bpf_map* map);
Napi::Object NewObjectProgram(Napi::Env env, std::shared_ptr<ObjectCore> core, bpf_program* prog);

// The fd of a JS map handle (throws if it was closed), for RingBuffer and sockmap attach.
int MapFdOf(Napi::Env env, const Napi::Value& v, std::string* name);

Napi::Value DetachCgroupAll(const Napi::CallbackInfo& info);
Napi::Value AttachedPrograms(const Napi::CallbackInfo& info);
Napi::Value BtfStruct(const Napi::CallbackInfo& info);
Napi::Value BtfEnum(const Napi::CallbackInfo& info);
// A loaded object's struct or enum (kind "struct" / "enum") from its BTF, or null when it has none.
Napi::Value ObjectBtfType(Napi::Env env, bpf_object* obj, const std::string& object, const std::string& kind,
                          const std::string& name);

}  // namespace kernmesh
