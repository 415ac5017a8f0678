// BpfObject: open + configure (pin paths, map sizes) + load a BPF ELF object.
#include <errno.h>
#include <string.h>

#include "common.h"

namespace kernmesh {

ObjectCore::~ObjectCore() { Close(); }

void ObjectCore::Close() {
  if (obj) bpf_object__close(obj);
  obj = nullptr;
}

namespace {

std::string Basename(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

class NativeObject : public Napi::ObjectWrap<NativeObject> {
 public:
  explicit NativeObject(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeObject>(info) {
    if (info.Length() < 1 || !info[0].IsExternal()) {
      throw Napi::TypeError::New(info.Env(), "BpfObject is created with BpfObject.open()");
    }
    auto* core = info[0].As<Napi::External<std::shared_ptr<ObjectCore>>>().Data();
    core_ = *core;
  }

  // open(path, pinDir, maxEntries: Record<string, number>, beforeLoad?: (btfType) => void)
  // beforeLoad runs after the ELF is read and before anything reaches the kernel, with a reader of
  // the object's BTF (btfType(kind, name), valid during the call only): when it throws, nothing
  // was loaded or pinned.
  static Napi::Value Open(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string path = info[0].As<Napi::String>();
    std::string pin_dir = info[1].As<Napi::String>();
    Napi::Object max_entries = info[2].IsObject() ? info[2].As<Napi::Object>() : Napi::Object::New(env);
    Subject subject = ObjectSubject(Basename(path));

    WarningCapture warnings;
    bpf_object* obj = bpf_object__open_file(path.c_str(), nullptr);
    if (!obj) throw BpfError(env, errno, "bpf_object__open_file", subject, warnings.Summary());
    auto core = std::make_shared<ObjectCore>();
    core->obj = obj;
    core->name = subject.name;

    if (info.Length() > 3 && info[3].IsFunction()) {
      auto alive = std::make_shared<bool>(true);
      std::weak_ptr<ObjectCore> weak = core;
      std::string name = subject.name;
      Napi::Function reader = Napi::Function::New(env, [weak, alive, name](const Napi::CallbackInfo& ci) -> Napi::Value {
        Napi::Env e = ci.Env();
        auto c = weak.lock();
        if (!*alive || !c || !c->obj)
          throw BpfError(e, EBADF, "bpf_object__btf", ObjectSubject(name), "the BTF reader works during the load only");
        return ObjectBtfType(e, c->obj, c->name, ci[0].As<Napi::String>(), ci[1].As<Napi::String>());
      });
      try {
        info[3].As<Napi::Function>().Call({reader});
      } catch (...) {
        *alive = false;
        throw;
      }
      *alive = false;
    }

    Napi::Array sizes = max_entries.GetPropertyNames();
    for (uint32_t i = 0; i < sizes.Length(); i++) {
      std::string name = sizes.Get(i).As<Napi::String>();
      uint32_t n = max_entries.Get(name).As<Napi::Number>().Uint32Value();
      bpf_map* map = bpf_object__find_map_by_name(obj, name.c_str());
      if (!map) {
        throw BpfError(env, ENOENT, "bpf_map__set_max_entries", MapSubject(name),
                       "no such map in " + subject.name);
      }
      int err = bpf_map__set_max_entries(map, n);
      if (err) throw BpfError(env, err, "bpf_map__set_max_entries", MapSubject(name));
    }

    // libbpf reuses a compatible map already pinned at this path, or pins the new one after load:
    // that is what lets a restarted agent find the state the kernel kept routing with.
    bpf_map* map;
    bpf_object__for_each_map(map, obj) {
      if (bpf_map__is_internal(map)) continue;
      std::string pin = pin_dir + "/" + bpf_map__name(map);
      int err = bpf_map__set_pin_path(map, pin.c_str());
      if (err) throw BpfError(env, err, "bpf_map__set_pin_path", MapSubject(bpf_map__name(map)), pin);
    }

    int err = bpf_object__load(obj);
    if (err) throw BpfError(env, err, "bpf_object__load", subject, warnings.Summary());

    Napi::Object self = Data(env)->object_ctor.New({Napi::External<std::shared_ptr<ObjectCore>>::New(env, &core)});
    return self;
  }

 private:
  Napi::Value Name(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), core_->name); }

  Napi::Value Maps(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Live(env);
    Napi::Array out = Napi::Array::New(env);
    bpf_map* map;
    uint32_t i = 0;
    bpf_object__for_each_map(map, core_->obj) out.Set(i++, NewObjectMap(env, core_, map));
    return out;
  }

  Napi::Value Programs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Live(env);
    Napi::Array out = Napi::Array::New(env);
    bpf_program* prog;
    uint32_t i = 0;
    bpf_object__for_each_program(prog, core_->obj) out.Set(i++, NewObjectProgram(env, core_, prog));
    return out;
  }

  // btfType(kind, name): the loaded object's struct or enum as its BTF declares it, or null.
  Napi::Value BtfType(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Live(env);
    return ObjectBtfType(env, core_->obj, core_->name, info[0].As<Napi::String>(), info[1].As<Napi::String>());
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    core_->Close();
    return info.Env().Undefined();
  }

  void Live(Napi::Env env) {
    if (!core_->obj) throw BpfError(env, EBADF, "bpf_object", ObjectSubject(core_->name), "object is closed");
  }

  std::shared_ptr<ObjectCore> core_;

 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeObject",
                       {StaticMethod<&NativeObject::Open>("open"),
                        InstanceAccessor<&NativeObject::Name>("name"),
                        InstanceMethod<&NativeObject::Maps>("maps"),
                        InstanceMethod<&NativeObject::Programs>("programs"),
                        InstanceMethod<&NativeObject::BtfType>("btfType"),
                        InstanceMethod<&NativeObject::Close>("close")});
  }
};

}  // namespace

Napi::Function InitObject(Napi::Env env) { return NativeObject::Define(env); }

}  // namespace kernmesh
