// Entry point of the kernmesh libbpf addon; native/index.ts is its typed front.
#include <errno.h>
#include <unistd.h>

#include "common.h"

namespace kernmesh {

namespace {

// enableStats(): BPF_ENABLE_STATS(BPF_STATS_RUN_TIME); the kernel counts while the returned fd is open.
Napi::Value EnableStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = bpf_enable_stats(BPF_STATS_RUN_TIME);
  if (fd < 0) throw BpfError(env, errno, "bpf_enable_stats", Subject{});
  return Napi::Number::New(env, fd);
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  if (fd >= 0) close(fd);
  return info.Env().Undefined();
}

Napi::Value PossibleCpus(const Napi::CallbackInfo& info) {
  int n = libbpf_num_possible_cpus();
  if (n < 0) throw BpfError(info.Env(), -n, "libbpf_num_possible_cpus", Subject{});
  return Napi::Number::New(info.Env(), n);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InstallLibbpfPrint();
  auto* data = new AddonData();
  env.SetInstanceData(data);
  Napi::Function object = InitObject(env), map = InitMap(env), program = InitProgram(env), link = InitLink(env),
                 ringbuf = InitRingBuffer(env);
  data->object_ctor = Napi::Persistent(object);
  data->map_ctor = Napi::Persistent(map);
  data->program_ctor = Napi::Persistent(program);
  data->link_ctor = Napi::Persistent(link);
  data->ringbuf_ctor = Napi::Persistent(ringbuf);
  exports.Set("NativeObject", object);
  exports.Set("NativeMap", map);
  exports.Set("NativeProgram", program);
  exports.Set("NativeLink", link);
  exports.Set("NativeRingBuffer", ringbuf);
  exports.Set("setLogSink", Napi::Function::New<SetLogSink>(env, "setLogSink"));
  exports.Set("enableStats", Napi::Function::New<EnableStats>(env, "enableStats"));
  exports.Set("closeFd", Napi::Function::New<CloseFd>(env, "closeFd"));
  exports.Set("possibleCpus", Napi::Function::New<PossibleCpus>(env, "possibleCpus"));
  exports.Set("detachCgroupAll", Napi::Function::New<DetachCgroupAll>(env, "detachCgroupAll"));
  exports.Set("attachedPrograms", Napi::Function::New<AttachedPrograms>(env, "attachedPrograms"));
  exports.Set("btfStruct", Napi::Function::New<BtfStruct>(env, "btfStruct"));
  exports.Set("btfEnum", Napi::Function::New<BtfEnum>(env, "btfEnum"));
  return exports;
}

}  // namespace

}  // namespace kernmesh

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return kernmesh::Init(env, exports); }

NODE_API_MODULE(kernmesh_native, InitAddon)
