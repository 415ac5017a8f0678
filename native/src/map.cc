// BpfMap: element operations on a map fd, either a member of a loaded object or a pinned map.
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <set>

#include "common.h"

namespace kernmesh {

namespace {

struct MapInit {
  std::shared_ptr<ObjectCore> core;  // set for a map of a loaded object
  bpf_map* map = nullptr;
  int own_fd = -1;  // set for a map opened from a pin
  std::string name;
  bpf_map_type type = BPF_MAP_TYPE_UNSPEC;
  uint32_t key_size = 0, value_size = 0, max_entries = 0;
};

bool IsPerCpu(bpf_map_type t) {
  return t == BPF_MAP_TYPE_PERCPU_HASH || t == BPF_MAP_TYPE_PERCPU_ARRAY || t == BPF_MAP_TYPE_LRU_PERCPU_HASH ||
         t == BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE;
}

// The kernel implements the batch commands for the hash and array families only.
bool HasBatch(bpf_map_type t) {
  switch (t) {
    case BPF_MAP_TYPE_HASH:
    case BPF_MAP_TYPE_PERCPU_HASH:
    case BPF_MAP_TYPE_LRU_HASH:
    case BPF_MAP_TYPE_LRU_PERCPU_HASH:
    case BPF_MAP_TYPE_ARRAY:
    case BPF_MAP_TYPE_PERCPU_ARRAY:
      return true;
    default:
      return false;
  }
}

__u64 UpdateFlag(Napi::Env env, const Napi::Value& v) {
  if (v.IsUndefined() || v.IsNull()) return BPF_ANY;
  std::string f = v.As<Napi::String>();
  if (f == "any") return BPF_ANY;
  if (f == "noexist") return BPF_NOEXIST;
  if (f == "exist") return BPF_EXIST;
  throw Napi::TypeError::New(env, "update flag must be 'any', 'noexist' or 'exist', not '" + f + "'");
}

class NativeMap : public Napi::ObjectWrap<NativeMap> {
 public:
  explicit NativeMap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeMap>(info) {
    if (info.Length() < 1 || !info[0].IsExternal()) {
      throw Napi::TypeError::New(info.Env(), "BpfMap is created by BpfObject.map() or BpfMap.openPinned()");
    }
    m_ = std::move(*info[0].As<Napi::External<MapInit>>().Data());
    value_buf_size_ = m_.value_size;
    if (IsPerCpu(m_.type)) {
      int ncpus = libbpf_num_possible_cpus();
      value_buf_size_ = static_cast<size_t>(ncpus > 0 ? ncpus : 1) * ((m_.value_size + 7) / 8 * 8);
    }
  }
  ~NativeMap() override {
    if (m_.own_fd >= 0) close(m_.own_fd);
  }

  // openPinned(path, name?)
  static Napi::Value OpenPinned(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string path = info[0].As<Napi::String>();
    int fd = bpf_obj_get(path.c_str());
    if (fd < 0) throw BpfError(env, errno, "bpf_obj_get", PathSubject(path));
    bpf_map_info mi;
    memset(&mi, 0, sizeof mi);
    __u32 len = sizeof mi;
    if (bpf_obj_get_info_by_fd(fd, &mi, &len)) {
      int err = errno;
      close(fd);
      throw BpfError(env, err, "bpf_obj_get_info_by_fd", PathSubject(path), "not a BPF map?");
    }
    MapInit init;
    init.own_fd = fd;
    // The kernel keeps 15 characters of a name; the caller may know the full one.
    init.name = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : mi.name;
    init.type = static_cast<bpf_map_type>(mi.type);
    init.key_size = mi.key_size;
    init.value_size = mi.value_size;
    init.max_entries = mi.max_entries;
    return Data(env)->map_ctor.New({Napi::External<MapInit>::New(env, &init)});
  }

  int Fd(Napi::Env env, const char* syscall) {
    if (m_.core) {
      if (!m_.core->obj) throw BpfError(env, EBADF, syscall, MapSubject(m_.name), "its object is closed");
      return bpf_map__fd(m_.map);
    }
    if (m_.own_fd < 0) throw BpfError(env, EBADF, syscall, MapSubject(m_.name), "map is closed");
    return m_.own_fd;
  }
  const std::string& name() const { return m_.name; }

 private:
  void CheckSize(Napi::Env env, const Napi::Value& v, size_t want, const char* what, const char* syscall) {
    if (!v.IsBuffer()) throw Napi::TypeError::New(env, std::string(what) + " must be a Buffer");
    size_t got = v.As<Napi::Buffer<uint8_t>>().Length();
    if (got != want) {
      throw BpfError(env, EINVAL, syscall, MapSubject(m_.name),
                     std::string(what) + " is " + std::to_string(got) + " bytes, the map's " + what + "s are " +
                         std::to_string(want));
    }
  }
  uint8_t* Bytes(const Napi::Value& v) { return v.As<Napi::Buffer<uint8_t>>().Data(); }

  Napi::Value Lookup(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const char* sc = "bpf_map_lookup_elem";
    CheckSize(env, info[0], m_.key_size, "key", sc);
    int fd = Fd(env, sc);
    auto out = Napi::Buffer<uint8_t>::New(env, value_buf_size_);
    if (bpf_map_lookup_elem(fd, Bytes(info[0]), out.Data())) {
      if (errno == ENOENT) return env.Undefined();
      throw BpfError(env, errno, sc, MapSubject(m_.name));
    }
    return out;
  }

  Napi::Value Update(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const char* sc = "bpf_map_update_elem";
    CheckSize(env, info[0], m_.key_size, "key", sc);
    CheckSize(env, info[1], value_buf_size_, "value", sc);
    __u64 flag = UpdateFlag(env, info[2]);
    int fd = Fd(env, sc);
    if (bpf_map_update_elem(fd, Bytes(info[0]), Bytes(info[1]), flag)) {
      throw BpfError(env, errno, sc, MapSubject(m_.name));
    }
    return env.Undefined();
  }

  Napi::Value Delete(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const char* sc = "bpf_map_delete_elem";
    CheckSize(env, info[0], m_.key_size, "key", sc);
    int fd = Fd(env, sc);
    if (bpf_map_delete_elem(fd, Bytes(info[0]))) {
      if (errno == ENOENT) return Napi::Boolean::New(env, false);
      throw BpfError(env, errno, sc, MapSubject(m_.name));
    }
    return Napi::Boolean::New(env, true);
  }

  Napi::Value Keys(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const char* sc = "bpf_map_get_next_key";
    int fd = Fd(env, sc);
    Napi::Array out = Napi::Array::New(env);
    std::vector<uint8_t> prev(m_.key_size), next(m_.key_size);
    // A hash map restarts from its first key when ours was deleted under us: skip repeats, and give
    // up rather than spin when the map keeps changing faster than we can walk it.
    std::set<std::string> seen;
    uint64_t budget = 4ull * std::max<uint32_t>(m_.max_entries, 1) + 16;
    uint32_t n = 0;
    for (const void* cur = nullptr;; cur = prev.data()) {
      if (bpf_map_get_next_key(fd, cur, next.data())) {
        if (errno == ENOENT) break;
        throw BpfError(env, errno, sc, MapSubject(m_.name));
      }
      if (budget-- == 0) throw BpfError(env, EAGAIN, sc, MapSubject(m_.name), "map kept changing during iteration");
      if (seen.emplace(reinterpret_cast<const char*>(next.data()), next.size()).second) {
        out.Set(n++, Napi::Buffer<uint8_t>::Copy(env, next.data(), next.size()));
      }
      prev.swap(next);
    }
    return out;
  }

  // lookupBatch(batchSize?): every [key, value] through BPF_MAP_LOOKUP_BATCH, batchSize at a time.
  Napi::Value LookupBatch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const char* sc = "bpf_map_lookup_batch";
    RequireBatch(env, sc);
    int fd = Fd(env, sc);
    uint32_t batch = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Uint32Value() : 0;
    if (batch == 0) batch = std::min<uint32_t>(std::max<uint32_t>(m_.max_entries, 1), 1024);
    // The position token is opaque: a bucket index for hash maps, a key for arrays.
    std::vector<uint8_t> in_batch(std::max<size_t>(m_.key_size, 8)), out_batch(in_batch.size());
    std::vector<uint8_t> keys, values;
    Napi::Array out = Napi::Array::New(env);
    uint32_t n = 0;
    bool first = true;
    DECLARE_LIBBPF_OPTS(bpf_map_batch_opts, opts);
    for (;;) {
      keys.resize(static_cast<size_t>(batch) * m_.key_size);
      values.resize(static_cast<size_t>(batch) * value_buf_size_);
      __u32 count = batch;
      int err = bpf_map_lookup_batch(fd, first ? nullptr : in_batch.data(), out_batch.data(), keys.data(),
                                     values.data(), &count, &opts);
      int e = err ? errno : 0;
      if (e && e != ENOENT && !(e == ENOSPC && count == 0)) throw BatchError(env, e, sc, 0, 0, "");
      if (e == ENOSPC) {
        // A hash bucket holds more entries than fit in one batch: retry the same position, larger.
        batch *= 2;
        continue;
      }
      for (__u32 i = 0; i < count; i++) {
        Napi::Array pair = Napi::Array::New(env, 2);
        pair.Set(0u, Napi::Buffer<uint8_t>::Copy(env, keys.data() + i * m_.key_size, m_.key_size));
        pair.Set(1u, Napi::Buffer<uint8_t>::Copy(env, values.data() + i * value_buf_size_, value_buf_size_));
        out.Set(n++, pair);
      }
      if (e == ENOENT) break;
      in_batch = out_batch;
      first = false;
    }
    return out;
  }

  // updateBatch(keys, values, flag?)
  Napi::Value UpdateBatch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const char* sc = "bpf_map_update_batch";
    RequireBatch(env, sc);
    Napi::Array ks = info[0].As<Napi::Array>(), vs = info[1].As<Napi::Array>();
    if (ks.Length() != vs.Length()) {
      throw Napi::TypeError::New(env, "updateBatch needs as many values (" + std::to_string(vs.Length()) +
                                          ") as keys (" + std::to_string(ks.Length()) + ")");
    }
    // The kernel takes no NOEXIST/EXIST for a batch (only BPF_F_LOCK): say so instead of a bare EINVAL.
    if (UpdateFlag(env, info[2]) != BPF_ANY) {
      throw BpfError(env, EINVAL, sc, MapSubject(m_.name), "batch updates take no 'noexist'/'exist' flag");
    }
    std::vector<uint8_t> keys = Pack(env, ks, m_.key_size, "key", sc);
    std::vector<uint8_t> values = Pack(env, vs, value_buf_size_, "value", sc);
    int fd = Fd(env, sc);
    DECLARE_LIBBPF_OPTS(bpf_map_batch_opts, opts);
    __u32 count = ks.Length();
    if (count && bpf_map_update_batch(fd, keys.data(), values.data(), &count, &opts)) {
      throw BatchError(env, errno, sc, count, ks.Length(), "written");
    }
    return env.Undefined();
  }

  // deleteBatch(keys): returns how many were deleted (all of them, or it throws).
  Napi::Value DeleteBatch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const char* sc = "bpf_map_delete_batch";
    RequireBatch(env, sc);
    Napi::Array ks = info[0].As<Napi::Array>();
    std::vector<uint8_t> keys = Pack(env, ks, m_.key_size, "key", sc);
    int fd = Fd(env, sc);
    DECLARE_LIBBPF_OPTS(bpf_map_batch_opts, opts);
    __u32 count = ks.Length();
    if (count && bpf_map_delete_batch(fd, keys.data(), &count, &opts)) {
      throw BatchError(env, errno, sc, count, ks.Length(), "deleted");
    }
    return Napi::Number::New(env, count);
  }

  void RequireBatch(Napi::Env env, const char* sc) {
    if (!HasBatch(m_.type)) {
      throw BpfError(env, EOPNOTSUPP, sc, MapSubject(m_.name),
                     std::string("no batch operations on ") + libbpf_bpf_map_type_str(m_.type) + " maps");
    }
  }

  // The kernel's internal ENOTSUPP becomes EOPNOTSUPP so callers test one code before falling back.
  // The kernel reports a count only when it stopped part-way; otherwise count is still our input.
  Napi::Error BatchError(Napi::Env env, int err, const char* sc, __u32 done, __u32 total, const char* what) {
    if (err == 524) err = EOPNOTSUPP;
    std::string detail;
    if (done < total) {
      detail = std::to_string(done) + " of " + std::to_string(total) + " entries " + what + " before the failure";
    }
    return BpfError(env, err, sc, MapSubject(m_.name), detail);
  }

  std::vector<uint8_t> Pack(Napi::Env env, Napi::Array arr, size_t size, const char* what, const char* sc) {
    std::vector<uint8_t> out(arr.Length() * size);
    for (uint32_t i = 0; i < arr.Length(); i++) {
      Napi::Value v = arr.Get(i);
      CheckSize(env, v, size, what, sc);
      memcpy(out.data() + i * size, Bytes(v), size);
    }
    return out;
  }

  Napi::Value Pin(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string path = info[0].As<Napi::String>();
    if (bpf_obj_pin(Fd(env, "bpf_obj_pin"), path.c_str())) {
      throw BpfError(env, errno, "bpf_obj_pin", MapSubject(m_.name), path);
    }
    return env.Undefined();
  }

  // Closes a pinned map's own fd; a map of an object lives as long as the object.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (m_.own_fd >= 0) close(m_.own_fd);
    m_.own_fd = -1;
    m_.core.reset();
    m_.map = nullptr;
    return info.Env().Undefined();
  }

  Napi::Value GetFd(const Napi::CallbackInfo& info) {
    if (m_.core && m_.core->obj) return Napi::Number::New(info.Env(), bpf_map__fd(m_.map));
    return Napi::Number::New(info.Env(), m_.own_fd);
  }
  Napi::Value GetName(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), m_.name); }
  Napi::Value GetType(const Napi::CallbackInfo& info) {
    const char* t = libbpf_bpf_map_type_str(m_.type);
    return Napi::String::New(info.Env(), t ? t : "unknown");
  }
  Napi::Value GetKeySize(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), m_.key_size); }
  Napi::Value GetValueSize(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), m_.value_size); }
  Napi::Value GetMaxEntries(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), m_.max_entries);
  }
  Napi::Value GetSupportsBatch(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), HasBatch(m_.type));
  }

  MapInit m_;
  size_t value_buf_size_;

 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeMap",
                       {StaticMethod<&NativeMap::OpenPinned>("openPinned"),
                        InstanceAccessor<&NativeMap::GetName>("name"),
                        InstanceAccessor<&NativeMap::GetType>("type"),
                        InstanceAccessor<&NativeMap::GetKeySize>("keySize"),
                        InstanceAccessor<&NativeMap::GetValueSize>("valueSize"),
                        InstanceAccessor<&NativeMap::GetMaxEntries>("maxEntries"),
                        InstanceAccessor<&NativeMap::GetFd>("fd"),
                        InstanceAccessor<&NativeMap::GetSupportsBatch>("supportsBatch"),
                        InstanceMethod<&NativeMap::Lookup>("lookup"),
                        InstanceMethod<&NativeMap::Update>("update"),
                        InstanceMethod<&NativeMap::Delete>("delete"),
                        InstanceMethod<&NativeMap::Keys>("keys"),
                        InstanceMethod<&NativeMap::LookupBatch>("lookupBatch"),
                        InstanceMethod<&NativeMap::UpdateBatch>("updateBatch"),
                        InstanceMethod<&NativeMap::DeleteBatch>("deleteBatch"),
                        InstanceMethod<&NativeMap::Pin>("pin"),
                        InstanceMethod<&NativeMap::Close>("close")});
  }
};

}  // namespace

Napi::Object NewObjectMap(Napi::Env env, std::shared_ptr<ObjectCore> core, bpf_map* map) {
  MapInit init;
  init.core = std::move(core);
  init.map = map;
  init.name = bpf_map__name(map);
  init.type = bpf_map__type(map);
  init.key_size = bpf_map__key_size(map);
  init.value_size = bpf_map__value_size(map);
  init.max_entries = bpf_map__max_entries(map);
  return Data(env)->map_ctor.New({Napi::External<MapInit>::New(env, &init)});
}

int MapFdOf(Napi::Env env, const Napi::Value& v, std::string* name) {
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(Data(env)->map_ctor.Value())) {
    throw Napi::TypeError::New(env, "expected a native BpfMap handle");
  }
  NativeMap* m = NativeMap::Unwrap(v.As<Napi::Object>());
  if (name) *name = m->name();
  return m->Fd(env, "bpf_map");
}

Napi::Function InitMap(Napi::Env env) { return NativeMap::Define(env); }

}  // namespace kernmesh
