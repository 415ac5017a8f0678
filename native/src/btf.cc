// btfStruct(objectPath, name): a struct's size and member offsets as the compiler laid them out,
// read from the object's BTF, so user-space codecs can be checked against the C side.
#include <bpf/btf.h>
#include <errno.h>

#include "common.h"

namespace kernmesh {

Napi::Value BtfStruct(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>();
  std::string name = info[1].As<Napi::String>();
  std::string object = path.substr(path.rfind('/') + 1);
  btf* b = btf__parse(path.c_str(), nullptr);
  if (!b) throw BpfError(env, errno, "btf__parse", ObjectSubject(object));
  std::unique_ptr<btf, void (*)(btf*)> guard(b, btf__free);

  __s32 id = btf__find_by_name_kind(b, name.c_str(), BTF_KIND_STRUCT);
  if (id < 0) throw BpfError(env, -id, "btf__find_by_name_kind", ObjectSubject(object), "no struct " + name);
  const btf_type* t = btf__type_by_id(b, id);
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

}  // namespace kernmesh
