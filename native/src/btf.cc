// Struct layouts and enum values as the compiler laid them out, read from an object's BTF: from a
// file (btfStruct/btfEnum) or from a loaded object (BpfObject.btfStruct/btfEnum), so the agent can
// check what its codecs declare against the object it runs.
#include <bpf/btf.h>
#include <errno.h>

#include "common.h"

namespace kernmesh {

namespace {

// The type of that name and kind, or nullptr. For enums, BTF_KIND_ENUM64 is tried too.
const btf_type* FindType(const btf* b, const std::string& name, __u32 kind) {
  __s32 id = btf__find_by_name_kind(b, name.c_str(), kind);
  if (id < 0 && kind == BTF_KIND_ENUM) id = btf__find_by_name_kind(b, name.c_str(), BTF_KIND_ENUM64);
  return id < 0 ? nullptr : btf__type_by_id(b, id);
}

Napi::Object StructValue(Napi::Env env, const btf* b, const std::string& name, const btf_type* t) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("name", name);
  out.Set("size", t->size);
  Napi::Array members = Napi::Array::New(env);
  const btf_member* m = btf_members(t);
  for (__u16 i = 0; i < btf_vlen(t); i++, m++) {
    Napi::Object member = Napi::Object::New(env);
    __u32 bit_offset = btf_member_bit_offset(t, i);
    member.Set("name", btf__name_by_offset(b, m->name_off));
    member.Set("offset", bit_offset / 8);
    member.Set("bitOffset", bit_offset);
    member.Set("bitSize", btf_member_bitfield_size(t, i));
    __s64 size = btf__resolve_size(b, m->type);
    member.Set("size", size < 0 ? Napi::Value(env.Null()) : Napi::Number::New(env, static_cast<double>(size)));
    members.Set(i, member);
  }
  out.Set("members", members);
  return out;
}

Napi::Object EnumValue(Napi::Env env, const btf* b, const std::string& name, const btf_type* t) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("name", name);
  out.Set("size", t->size);
  Napi::Object values = Napi::Object::New(env);
  if (btf_is_enum64(t)) {
    const struct btf_enum64* e = btf_enum64(t);
    for (__u16 i = 0; i < btf_vlen(t); i++, e++)
      values.Set(btf__name_by_offset(b, e->name_off), Napi::Number::New(env, static_cast<double>(btf_enum64_value(e))));
  } else {
    const struct btf_enum* e = btf_enum(t);
    bool is_signed = btf_kflag(t);
    for (__u16 i = 0; i < btf_vlen(t); i++, e++) {
      double v = is_signed ? static_cast<double>(e->val) : static_cast<double>(static_cast<__u32>(e->val));
      values.Set(btf__name_by_offset(b, e->name_off), Napi::Number::New(env, v));
    }
  }
  out.Set("values", values);
  return out;
}

// The object file's BTF, freed on every exit path.
struct FileBtf {
  btf* b;
  FileBtf(Napi::Env env, const std::string& path, const std::string& object) {
    b = btf__parse(path.c_str(), nullptr);
    if (!b) throw BpfError(env, errno, "btf__parse", ObjectSubject(object));
  }
  ~FileBtf() { btf__free(b); }
};

std::string BaseName(const std::string& path) { return path.substr(path.rfind('/') + 1); }

}  // namespace

// btfStruct(objectPath, name): a struct's size and members; ENOENT names what is missing.
Napi::Value BtfStruct(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>();
  std::string name = info[1].As<Napi::String>();
  std::string object = BaseName(path);
  FileBtf f(env, path, object);
  const btf_type* t = FindType(f.b, name, BTF_KIND_STRUCT);
  if (!t) throw BpfError(env, ENOENT, "btf__find_by_name_kind", ObjectSubject(object), "no struct " + name);
  return StructValue(env, f.b, name, t);
}

// btfEnum(objectPath, name): an enum's size and its values by name; ENOENT names what is missing.
Napi::Value BtfEnum(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>();
  std::string name = info[1].As<Napi::String>();
  std::string object = BaseName(path);
  FileBtf f(env, path, object);
  const btf_type* t = FindType(f.b, name, BTF_KIND_ENUM);
  if (!t) throw BpfError(env, ENOENT, "btf__find_by_name_kind", ObjectSubject(object), "no enum " + name);
  return EnumValue(env, f.b, name, t);
}

// A loaded object's struct or enum of that name, or null (kind "struct" or "enum").
Napi::Value ObjectBtfType(Napi::Env env, bpf_object* obj, const std::string& object, const std::string& kind,
                          const std::string& name) {
  const btf* b = bpf_object__btf(obj);
  if (!b) throw BpfError(env, ENODATA, "bpf_object__btf", ObjectSubject(object), "the object has no BTF");
  if (kind == "struct") {
    const btf_type* t = FindType(b, name, BTF_KIND_STRUCT);
    return t ? Napi::Value(StructValue(env, b, name, t)) : env.Null();
  }
  const btf_type* t = FindType(b, name, BTF_KIND_ENUM);
  return t ? Napi::Value(EnumValue(env, b, name, t)) : env.Null();
}

}  // namespace kernmesh
