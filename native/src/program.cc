// BpfProgram and BpfLink: attaching programs to cgroups (bpf_link first, PROG_ATTACH as fallback)
// and to sockmaps, pinning links, reading run-time statistics.
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

namespace kernmesh {

namespace {

// A cgroup directory fd, closed on every exit path.
struct CgroupFd {
  int fd;
  explicit CgroupFd(Napi::Env env, const std::string& path, const char* syscall, const Subject& subject) {
    fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) throw BpfError(env, errno, syscall, subject, "cannot open cgroup " + path);
  }
  ~CgroupFd() {
    if (fd >= 0) close(fd);
  }
  int release() {
    int f = fd;
    fd = -1;
    return f;
  }
};

struct LinkInit {
  bpf_link* link = nullptr;  // a real bpf_link
  // or a PROG_ATTACH attachment, identified by (program, cgroup, attach type)
  int legacy_prog_fd = -1, legacy_cgroup_fd = -1;
  bpf_attach_type legacy_type = BPF_CGROUP_INET_INGRESS;
  std::string name, pinned;
};

class NativeLink : public Napi::ObjectWrap<NativeLink> {
 public:
  explicit NativeLink(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeLink>(info) {
    if (info.Length() < 1 || !info[0].IsExternal()) {
      throw Napi::TypeError::New(info.Env(), "BpfLink is created by attachCgroup() or BpfLink.openPinned()");
    }
    l_ = std::move(*info[0].As<Napi::External<LinkInit>>().Data());
  }
  ~NativeLink() override { Release(); }

  static Napi::Value OpenPinned(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string path = info[0].As<Napi::String>();
    LinkInit init;
    init.link = bpf_link__open(path.c_str());
    if (!init.link) throw BpfError(env, errno, "bpf_link__open", LinkSubject(path));
    init.name = path;
    init.pinned = path;
    return Data(env)->link_ctor.New({Napi::External<LinkInit>::New(env, &init)});
  }

 private:
  void Release() {
    // Destroying our handle only closes the fd: a pinned link stays attached, as does a PROG_ATTACH one.
    if (l_.link) bpf_link__destroy(l_.link);
    l_.link = nullptr;
    if (l_.legacy_prog_fd >= 0) close(l_.legacy_prog_fd);
    if (l_.legacy_cgroup_fd >= 0) close(l_.legacy_cgroup_fd);
    l_.legacy_prog_fd = l_.legacy_cgroup_fd = -1;
  }
  bool Legacy() const { return l_.legacy_prog_fd >= 0; }
  void Live(Napi::Env env, const char* sc) {
    if (!l_.link && !Legacy()) throw BpfError(env, EBADF, sc, LinkSubject(l_.name), "link is closed");
  }

  Napi::Value Pin(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string path = info[0].As<Napi::String>();
    Live(env, "bpf_link__pin");
    if (Legacy()) {
      throw BpfError(env, EOPNOTSUPP, "bpf_link__pin", LinkSubject(l_.name),
                     "a PROG_ATTACH attachment has no link to pin (it stays attached until detached)");
    }
    int err = bpf_link__pin(l_.link, path.c_str());
    if (err) throw BpfError(env, err, "bpf_link__pin", LinkSubject(l_.name), path);
    l_.pinned = path;
    return env.Undefined();
  }

  Napi::Value Unpin(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Live(env, "bpf_link__unpin");
    if (l_.pinned.empty()) return env.Undefined();
    // A link opened from its pin did not record the path in libbpf, so unlink it ourselves.
    if (bpf_link__pin_path(l_.link)) {
      int err = bpf_link__unpin(l_.link);
      if (err) throw BpfError(env, err, "bpf_link__unpin", LinkSubject(l_.name), l_.pinned);
    } else if (unlink(l_.pinned.c_str()) && errno != ENOENT) {
      throw BpfError(env, errno, "unlink", LinkSubject(l_.name), l_.pinned);
    }
    l_.pinned.clear();
    return env.Undefined();
  }

  Napi::Value Detach(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Live(env, "bpf_link_detach");
    if (Legacy()) {
      if (bpf_prog_detach2(l_.legacy_prog_fd, l_.legacy_cgroup_fd, l_.legacy_type)) {
        throw BpfError(env, errno, "bpf_prog_detach2", LinkSubject(l_.name));
      }
      return env.Undefined();
    }
    int err = bpf_link__detach(l_.link);
    if (err) throw BpfError(env, err, "bpf_link_detach", LinkSubject(l_.name));
    return env.Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Release();
    return info.Env().Undefined();
  }

  Napi::Value GetFd(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), l_.link ? bpf_link__fd(l_.link) : -1);
  }
  Napi::Value GetPinned(const Napi::CallbackInfo& info) {
    if (l_.pinned.empty()) return info.Env().Undefined();
    return Napi::String::New(info.Env(), l_.pinned);
  }
  Napi::Value GetLegacy(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), Legacy()); }

  LinkInit l_;

 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeLink",
                       {StaticMethod<&NativeLink::OpenPinned>("openPinned"),
                        InstanceAccessor<&NativeLink::GetFd>("fd"),
                        InstanceAccessor<&NativeLink::GetPinned>("pinned"),
                        InstanceAccessor<&NativeLink::GetLegacy>("legacy"),
                        InstanceMethod<&NativeLink::Pin>("pin"),
                        InstanceMethod<&NativeLink::Unpin>("unpin"),
                        InstanceMethod<&NativeLink::Detach>("detach"),
                        InstanceMethod<&NativeLink::Close>("close")});
  }
};

struct ProgramInit {
  std::shared_ptr<ObjectCore> core;
  bpf_program* prog;
};

class NativeProgram : public Napi::ObjectWrap<NativeProgram> {
 public:
  explicit NativeProgram(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeProgram>(info) {
    if (info.Length() < 1 || !info[0].IsExternal()) {
      throw Napi::TypeError::New(info.Env(), "BpfProgram is created by BpfObject.program()");
    }
    auto* init = info[0].As<Napi::External<ProgramInit>>().Data();
    core_ = init->core;
    prog_ = init->prog;
    name_ = bpf_program__name(prog_);
    type_ = bpf_program__type(prog_);
    attach_type_ = bpf_program__expected_attach_type(prog_);
  }

 private:
  int Fd(Napi::Env env, const char* sc) {
    if (!core_->obj) throw BpfError(env, EBADF, sc, ProgramSubject(name_), "its object is closed");
    return bpf_program__fd(prog_);
  }

  // attachCgroup(path, pinPath?, forceProgAttach?)
  Napi::Value AttachCgroup(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string cgroup = info[0].As<Napi::String>();
    std::string pin = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
    bool force_prog_attach = info.Length() > 2 && info[2].ToBoolean();
    int prog_fd = Fd(env, "bpf_link_create");
    CgroupFd cg(env, cgroup, "open", ProgramSubject(name_));
    LinkInit init;
    init.name = name_ + "@" + cgroup;

    if (!force_prog_attach) {
      bpf_link* link = bpf_program__attach_cgroup(prog_, cg.fd);
      if (link) {
        if (!pin.empty()) {
          int err = bpf_link__pin(link, pin.c_str());
          if (err) {
            bpf_link__destroy(link);
            throw BpfError(env, err, "bpf_link__pin", ProgramSubject(name_), pin);
          }
          init.pinned = pin;
        }
        init.link = link;
        return Data(env)->link_ctor.New({Napi::External<LinkInit>::New(env, &init)});
      }
      int err = errno;
      // Kernels before 5.7 have no cgroup bpf_link (EINVAL for the unknown command or attach type);
      // only then fall back to PROG_ATTACH, which cannot be pinned but outlives the process anyway.
      if (err != EINVAL && err != EOPNOTSUPP && err != 524) {
        throw BpfError(env, err, "bpf_link_create", ProgramSubject(name_), "cgroup " + cgroup);
      }
    }

    if (bpf_prog_attach(prog_fd, cg.fd, attach_type_, BPF_F_ALLOW_MULTI)) {
      throw BpfError(env, errno, "bpf_prog_attach", ProgramSubject(name_), "cgroup " + cgroup);
    }
    init.legacy_prog_fd = fcntl(prog_fd, F_DUPFD_CLOEXEC, 0);
    init.legacy_cgroup_fd = cg.release();
    init.legacy_type = attach_type_;
    return Data(env)->link_ctor.New({Napi::External<LinkInit>::New(env, &init)});
  }

  Napi::Value AttachSockmap(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string map_name;
    int map_fd = MapFdOf(env, info[0], &map_name);
    int prog_fd = Fd(env, "bpf_prog_attach");
    if (bpf_prog_attach(prog_fd, map_fd, attach_type_, 0)) {
      throw BpfError(env, errno, "bpf_prog_attach", ProgramSubject(name_), "to map " + map_name);
    }
    return env.Undefined();
  }

  Napi::Value DetachSockmap(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string map_name;
    int map_fd = MapFdOf(env, info[0], &map_name);
    int prog_fd = Fd(env, "bpf_prog_detach2");
    if (bpf_prog_detach2(prog_fd, map_fd, attach_type_)) {
      throw BpfError(env, errno, "bpf_prog_detach2", ProgramSubject(name_), "from map " + map_name);
    }
    return env.Undefined();
  }

  bool Info(Napi::Env env, bpf_prog_info* pi) {
    memset(pi, 0, sizeof *pi);
    __u32 len = sizeof *pi;
    if (bpf_obj_get_info_by_fd(Fd(env, "bpf_obj_get_info_by_fd"), pi, &len)) {
      throw BpfError(env, errno, "bpf_obj_get_info_by_fd", ProgramSubject(name_));
    }
    return true;
  }

  // Run time and count accumulate only while some process holds BPF_ENABLE_STATS (enableStats()).
  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    bpf_prog_info pi;
    Info(env, &pi);
    Napi::Object out = Napi::Object::New(env);
    out.Set("runTimeNs", Napi::BigInt::New(env, static_cast<uint64_t>(pi.run_time_ns)));
    out.Set("runCount", Napi::BigInt::New(env, static_cast<uint64_t>(pi.run_cnt)));
    return out;
  }

  Napi::Value GetId(const Napi::CallbackInfo& info) {
    bpf_prog_info pi;
    Info(info.Env(), &pi);
    return Napi::Number::New(info.Env(), pi.id);
  }
  Napi::Value GetFd(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), core_->obj ? bpf_program__fd(prog_) : -1);
  }
  Napi::Value GetName(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), name_); }
  Napi::Value GetType(const Napi::CallbackInfo& info) {
    const char* t = libbpf_bpf_prog_type_str(type_);
    return Napi::String::New(info.Env(), t ? t : "unknown");
  }
  Napi::Value GetAttachType(const Napi::CallbackInfo& info) {
    const char* t = libbpf_bpf_attach_type_str(attach_type_);
    return Napi::String::New(info.Env(), t ? t : "unknown");
  }

  std::shared_ptr<ObjectCore> core_;
  bpf_program* prog_;
  std::string name_;
  bpf_prog_type type_;
  bpf_attach_type attach_type_;

 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeProgram",
                       {InstanceAccessor<&NativeProgram::GetName>("name"),
                        InstanceAccessor<&NativeProgram::GetType>("type"),
                        InstanceAccessor<&NativeProgram::GetAttachType>("attachType"),
                        InstanceAccessor<&NativeProgram::GetFd>("fd"),
                        InstanceAccessor<&NativeProgram::GetId>("id"),
                        InstanceMethod<&NativeProgram::AttachCgroup>("attachCgroup"),
                        InstanceMethod<&NativeProgram::AttachSockmap>("attachSockmap"),
                        InstanceMethod<&NativeProgram::DetachSockmap>("detachSockmap"),
                        InstanceMethod<&NativeProgram::Stats>("stats")});
  }
};

// Accepts libbpf's attach type names ("cgroup_inet4_connect") and section names ("cgroup/connect4").
bool ParseAttachType(const std::string& s, bpf_attach_type* out) {
  for (int t = 0; t < __MAX_BPF_ATTACH_TYPE; t++) {
    const char* name = libbpf_bpf_attach_type_str(static_cast<bpf_attach_type>(t));
    if (name && s == name) {
      *out = static_cast<bpf_attach_type>(t);
      return true;
    }
  }
  return libbpf_attach_type_by_name(s.c_str(), out) == 0;
}

}  // namespace

Napi::Object NewObjectProgram(Napi::Env env, std::shared_ptr<ObjectCore> core, bpf_program* prog) {
  ProgramInit init{std::move(core), prog};
  return Data(env)->program_ctor.New({Napi::External<ProgramInit>::New(env, &init)});
}

// detachCgroupAll(cgroupPath, attachType): removes every program of that attach type from the
// cgroup, links and PROG_ATTACH alike; for cleanup tools. Returns how many were detached.
// Whether the program behind prog_fd has a name starting with prefix (an empty prefix matches all).
// The kernel keeps the first 15 characters of a program's name.
static bool ProgNameStartsWith(int prog_fd, const std::string& prefix) {
  if (prefix.empty()) return true;
  bpf_prog_info pi;
  memset(&pi, 0, sizeof pi);
  __u32 len = sizeof pi;
  if (bpf_obj_get_info_by_fd(prog_fd, &pi, &len)) return false;
  return strncmp(pi.name, prefix.c_str(), prefix.size()) == 0;
}

static bool LinkProgNameStartsWith(__u32 prog_id, const std::string& prefix) {
  if (prefix.empty()) return true;
  int fd = bpf_prog_get_fd_by_id(prog_id);
  if (fd < 0) return false;
  bool match = ProgNameStartsWith(fd, prefix);
  close(fd);
  return match;
}

Napi::Value DetachCgroupAll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>();
  std::string type_name = info[1].As<Napi::String>();
  // Only programs whose name starts with this are detached: a cleanup tool must leave other
  // tools' programs on a shared cgroup alone.
  std::string prefix = info.Length() > 2 && info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "";
  bpf_attach_type type;
  if (!ParseAttachType(type_name, &type)) throw Napi::TypeError::New(env, "unknown attach type " + type_name);
  CgroupFd cg(env, path, "open", PathSubject(path));
  struct stat st;
  if (fstat(cg.fd, &st)) throw BpfError(env, errno, "fstat", PathSubject(path));
  int detached = 0;

  // Links: find cgroup links of this type whose cgroup id (the directory's inode) is ours.
  for (__u32 id = 0;;) {
    if (bpf_link_get_next_id(id, &id)) break;
    int fd = bpf_link_get_fd_by_id(id);
    if (fd < 0) continue;
    bpf_link_info li;
    memset(&li, 0, sizeof li);
    __u32 len = sizeof li;
    if (bpf_obj_get_info_by_fd(fd, &li, &len) == 0 && li.type == BPF_LINK_TYPE_CGROUP &&
        li.cgroup.cgroup_id == st.st_ino && li.cgroup.attach_type == type &&
        LinkProgNameStartsWith(li.prog_id, prefix)) {
      if (bpf_link_detach(fd) == 0) detached++;
    }
    close(fd);
  }

  // PROG_ATTACH attachments: what the cgroup still lists after the links are gone.
  // With more than 64 attached the kernel fills the array and says ENOSPC: go round until done.
  for (bool progress = true; progress;) {
    progress = false;
    __u32 ids[64];
    __u32 count = 64, flags = 0;
    int err = bpf_prog_query(cg.fd, type, 0, &flags, ids, &count);
    if (err && errno != ENOSPC) break;
    for (__u32 i = 0; i < count && i < 64; i++) {
      int fd = bpf_prog_get_fd_by_id(ids[i]);
      if (fd < 0) continue;
      if (ProgNameStartsWith(fd, prefix) && bpf_prog_detach2(fd, cg.fd, type) == 0) {
        detached++;
        progress = true;
      }
      close(fd);
    }
  }
  return Napi::Number::New(env, detached);
}

Napi::Function InitProgram(Napi::Env env) { return NativeProgram::Define(env); }
Napi::Function InitLink(Napi::Env env) { return NativeLink::Define(env); }

}  // namespace kernmesh
