// BpfProgram and BpfLink: attaching programs to cgroups (bpf_link first, PROG_ATTACH as fallback)
// and to sockmaps, pinning links, reading run-time statistics.
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sched.h>

#include <algorithm>
#include <thread>

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

// The id of the program behind an fd, 0 when the kernel will not say.
__u32 ProgIdOf(int prog_fd) {
  bpf_prog_info pi;
  memset(&pi, 0, sizeof pi);
  __u32 len = sizeof pi;
  return bpf_obj_get_info_by_fd(prog_fd, &pi, &len) ? 0 : pi.id;
}

// Programs of cgroup bpf_links of one attach type on the cgroup whose inode is cgroup_id.
std::vector<__u32> CgroupLinkProgIds(__u64 cgroup_id, bpf_attach_type type) {
  std::vector<__u32> out;
  for (__u32 id = 0;;) {
    if (bpf_link_get_next_id(id, &id)) break;
    int fd = bpf_link_get_fd_by_id(id);
    if (fd < 0) continue;
    bpf_link_info li;
    memset(&li, 0, sizeof li);
    __u32 len = sizeof li;
    if (bpf_obj_get_info_by_fd(fd, &li, &len) == 0 && li.type == BPF_LINK_TYPE_CGROUP &&
        li.cgroup.cgroup_id == cgroup_id && li.cgroup.attach_type == type) {
      out.push_back(li.prog_id);
    }
    close(fd);
  }
  return out;
}

// Ids of the programs attached to a cgroup or sockmap (its own list, not the effective one).
// The kernel says ENOSPC when more than the array holds; 256 is far beyond what kernmesh attaches.
int QueryProgIds(int target_fd, bpf_attach_type type, std::vector<__u32>* out) {
  out->assign(256, 0);
  __u32 count = out->size(), flags = 0;
  if (bpf_prog_query(target_fd, type, 0, &flags, out->data(), &count)) return errno;
  out->resize(count);
  return 0;
}

// Swaps one PROG_ATTACH program for another on a cgroup with no moment without either:
// BPF_F_REPLACE where the kernel has it (5.6), else attach the new one, then detach the old.
int ReplaceProgAttach(int new_fd, int cgroup_fd, bpf_attach_type type, int old_fd, const char** syscall) {
  LIBBPF_OPTS(bpf_prog_attach_opts, opts, .flags = BPF_F_ALLOW_MULTI | BPF_F_REPLACE,
              .replace_prog_fd = old_fd);
  *syscall = "bpf_prog_attach";
  if (bpf_prog_attach_opts(new_fd, cgroup_fd, type, &opts) == 0) return 0;
  if (errno != EINVAL) return errno;
  if (bpf_prog_attach(new_fd, cgroup_fd, type, BPF_F_ALLOW_MULTI)) return errno;
  *syscall = "bpf_prog_detach2";
  if (bpf_prog_detach2(old_fd, cgroup_fd, type)) return errno;
  return 0;
}

struct LinkInit {
  bpf_link* link = nullptr;  // a real bpf_link
  // or a PROG_ATTACH attachment, identified by (program, cgroup, attach type)
  int legacy_prog_fd = -1, legacy_cgroup_fd = -1;
  bpf_attach_type legacy_type = BPF_CGROUP_INET_INGRESS;
  std::string name, pinned;
  __u32 replaced_prog_id = 0;  // a previous run's PROG_ATTACH program this attachment took over
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

  // update(progFd, progName, expectedProgId?): the link runs the new program from now on, atomically
  // (BPF_LINK_UPDATE); with expectedProgId only if that program is the one it runs (BPF_F_REPLACE).
  // A PROG_ATTACH attachment swaps its program the same way. Returns the previous program's id.
  Napi::Value Update(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int new_fd = info[0].As<Napi::Number>().Int32Value();
    std::string prog_name = info[1].As<Napi::String>();
    __u32 expected = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Uint32Value() : 0;
    const std::string what = "to run " + prog_name;
    Live(env, Legacy() ? "bpf_prog_attach" : "bpf_link_update");
    if (new_fd < 0) throw BpfError(env, EBADF, "bpf_link_update", ProgramSubject(prog_name), "its object is closed");

    if (Legacy()) {
      __u32 previous = ProgIdOf(l_.legacy_prog_fd);
      if (expected && expected != previous) {
        throw BpfError(env, EPERM, "bpf_prog_attach", LinkSubject(l_.name),
                       what + ": it runs program " + std::to_string(previous) + ", not " + std::to_string(expected));
      }
      int dup = fcntl(new_fd, F_DUPFD_CLOEXEC, 0);
      if (dup < 0) throw BpfError(env, errno, "fcntl", LinkSubject(l_.name), what);
      const char* sc;
      int err = ReplaceProgAttach(new_fd, l_.legacy_cgroup_fd, l_.legacy_type, l_.legacy_prog_fd, &sc);
      if (err) {
        close(dup);
        throw BpfError(env, err, sc, LinkSubject(l_.name), what);
      }
      close(l_.legacy_prog_fd);
      l_.legacy_prog_fd = dup;
      return Napi::Number::New(env, previous);
    }

    int link_fd = bpf_link__fd(l_.link);
    bpf_link_info li;
    memset(&li, 0, sizeof li);
    __u32 len = sizeof li;
    if (bpf_obj_get_info_by_fd(link_fd, &li, &len)) {
      throw BpfError(env, errno, "bpf_obj_get_info_by_fd", LinkSubject(l_.name));
    }
    LIBBPF_OPTS(bpf_link_update_opts, opts);
    int old_fd = -1;
    if (expected) {
      old_fd = bpf_prog_get_fd_by_id(expected);
      if (old_fd < 0) {
        throw BpfError(env, errno, "bpf_prog_get_fd_by_id", LinkSubject(l_.name),
                       what + ": expected program " + std::to_string(expected));
      }
      opts.flags = BPF_F_REPLACE;
      opts.old_prog_fd = old_fd;
    }
    int err = bpf_link_update(link_fd, new_fd, &opts) ? errno : 0;
    if (old_fd >= 0) close(old_fd);
    if (err == ENOLINK) {
      throw BpfError(env, err, "bpf_link_update", LinkSubject(l_.name),
                     what + ": the link is defunct (its cgroup is gone or it was detached)");
    }
    if (err == EPERM && expected) {
      throw BpfError(env, err, "bpf_link_update", LinkSubject(l_.name),
                     what + ": it runs program " + std::to_string(li.prog_id) + ", not " + std::to_string(expected));
    }
    if (err) throw BpfError(env, err, "bpf_link_update", LinkSubject(l_.name), what);
    return Napi::Number::New(env, li.prog_id);
  }

  // info(): what the kernel says about the link: its id, type, program and (cgroup links) cgroup.
  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Live(env, "bpf_obj_get_info_by_fd");
    Napi::Object out = Napi::Object::New(env);
    if (Legacy()) {
      const char* t = libbpf_bpf_attach_type_str(l_.legacy_type);
      out.Set("id", 0);
      out.Set("type", "prog_attach");
      out.Set("programId", ProgIdOf(l_.legacy_prog_fd));
      out.Set("attachType", t ? t : "unknown");
      return out;
    }
    bpf_link_info li;
    memset(&li, 0, sizeof li);
    __u32 len = sizeof li;
    if (bpf_obj_get_info_by_fd(bpf_link__fd(l_.link), &li, &len)) {
      throw BpfError(env, errno, "bpf_obj_get_info_by_fd", LinkSubject(l_.name));
    }
    const char* lt = libbpf_bpf_link_type_str(static_cast<bpf_link_type>(li.type));
    out.Set("id", li.id);
    out.Set("type", lt ? lt : "unknown");
    out.Set("programId", li.prog_id);
    if (li.type == BPF_LINK_TYPE_CGROUP) {
      const char* t = libbpf_bpf_attach_type_str(static_cast<bpf_attach_type>(li.cgroup.attach_type));
      // 0 once the cgroup is gone: the link is defunct
      out.Set("cgroupId", Napi::BigInt::New(env, static_cast<uint64_t>(li.cgroup.cgroup_id)));
      out.Set("attachType", t ? t : "unknown");
    }
    return out;
  }

  Napi::Value GetReplacedProgramId(const Napi::CallbackInfo& info) {
    if (!l_.replaced_prog_id) return info.Env().Undefined();
    return Napi::Number::New(info.Env(), l_.replaced_prog_id);
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
                        InstanceAccessor<&NativeLink::GetReplacedProgramId>("replacedProgramId"),
                        InstanceMethod<&NativeLink::Update>("update"),
                        InstanceMethod<&NativeLink::Info>("info"),
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

  // attachCgroup(path, pinPath?, forceProgAttach?, replaceSameName?)
  Napi::Value AttachCgroup(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string cgroup = info[0].As<Napi::String>();
    std::string pin = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
    bool force_prog_attach = info.Length() > 2 && info[2].ToBoolean();
    bool replace_same_name = info.Length() > 3 && info[3].ToBoolean();
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

    // A PROG_ATTACH program cannot be pinned, so a restarted agent finds its previous one by name:
    // swap it for ours rather than run both.
    std::vector<int> previous;
    if (replace_same_name) previous = SameNameProgAttached(env, cg.fd, cgroup);
    if (!previous.empty()) {
      init.replaced_prog_id = ProgIdOf(previous[0]);
      const char* sc;
      int err = ReplaceProgAttach(prog_fd, cg.fd, attach_type_, previous[0], &sc);
      // copies beyond the first (left by an agent that added rather than replaced) go too
      for (size_t i = 1; i < previous.size() && !err; i++) bpf_prog_detach2(previous[i], cg.fd, attach_type_);
      for (int fd : previous) close(fd);
      if (err) {
        throw BpfError(env, err, sc, ProgramSubject(name_),
                       "cgroup " + cgroup + ", replacing program " + std::to_string(init.replaced_prog_id));
      }
    } else if (bpf_prog_attach(prog_fd, cg.fd, attach_type_, BPF_F_ALLOW_MULTI)) {
      throw BpfError(env, errno, "bpf_prog_attach", ProgramSubject(name_), "cgroup " + cgroup);
    }
    init.legacy_prog_fd = fcntl(prog_fd, F_DUPFD_CLOEXEC, 0);
    init.legacy_cgroup_fd = cg.release();
    init.legacy_type = attach_type_;
    return Data(env)->link_ctor.New({Napi::External<LinkInit>::New(env, &init)});
  }

  // attachNetns(netnsPath, pinPath?): a bpf_link from this program (sk_lookup, flow dissector) to
  // the network namespace the nsfs file at netnsPath names, pinned at pinPath when given.
  Napi::Value AttachNetns(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string netns = info[0].As<Napi::String>();
    std::string pin = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
    Fd(env, "bpf_link_create");
    int ns_fd = open(netns.c_str(), O_RDONLY | O_CLOEXEC);
    if (ns_fd < 0) throw BpfError(env, errno, "open", ProgramSubject(name_), "network namespace " + netns);
    bpf_link* link = bpf_program__attach_netns(prog_, ns_fd);
    int err = link ? 0 : errno;
    close(ns_fd);
    if (!link) throw BpfError(env, err, "bpf_link_create", ProgramSubject(name_), "network namespace " + netns);
    LinkInit init;
    init.name = name_ + "@" + netns;
    if (!pin.empty()) {
      err = bpf_link__pin(link, pin.c_str());
      if (err) {
        bpf_link__destroy(link);
        throw BpfError(env, err, "bpf_link__pin", ProgramSubject(name_), pin);
      }
      init.pinned = pin;
    }
    init.link = link;
    return Data(env)->link_ctor.New({Napi::External<LinkInit>::New(env, &init)});
  }

  // fds of the PROG_ATTACH programs on the cgroup with this program's attach type and kernel name
  // (its first 15 characters), other than this very program; links' programs are left out.
  std::vector<int> SameNameProgAttached(Napi::Env env, int cgroup_fd, const std::string& cgroup) {
    struct stat st;
    if (fstat(cgroup_fd, &st)) throw BpfError(env, errno, "fstat", ProgramSubject(name_), cgroup);
    std::vector<__u32> ids;
    int err = QueryProgIds(cgroup_fd, attach_type_, &ids);
    if (err) throw BpfError(env, err, "bpf_prog_query", ProgramSubject(name_), "cgroup " + cgroup);
    std::vector<__u32> linked = CgroupLinkProgIds(st.st_ino, attach_type_);
    __u32 own = ProgIdOf(bpf_program__fd(prog_));
    std::string kernel_name = name_.substr(0, BPF_OBJ_NAME_LEN - 1);
    std::vector<int> out;
    for (__u32 id : ids) {
      if (id == own || std::find(linked.begin(), linked.end(), id) != linked.end()) continue;
      int fd = bpf_prog_get_fd_by_id(id);
      if (fd < 0) continue;
      bpf_prog_info pi;
      memset(&pi, 0, sizeof pi);
      __u32 len = sizeof pi;
      if (bpf_obj_get_info_by_fd(fd, &pi, &len) == 0 && kernel_name == pi.name) {
        out.push_back(fd);
      } else {
        close(fd);
      }
    }
    return out;
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

  // iterate(map?, netnsPath?): runs this iterator program (SEC("iter/...")) once over its whole
  // sequence and returns what it wrote (bpf_seq_write/printf): a link for the run, an iterator fd
  // read to its end, both closed. A map iterator walks `map`. Socket iterators see the network
  // namespace of the task that creates the iterator, so with netnsPath a short-lived thread enters
  // that namespace first (setns needs CAP_SYS_ADMIN); the JS thread's own namespace never changes.
  Napi::Value Iterate(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string map_name;
    int map_fd = -1;
    if (info.Length() > 0 && !info[0].IsUndefined() && !info[0].IsNull()) map_fd = MapFdOf(env, info[0], &map_name);
    std::string netns = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
    Fd(env, "bpf_link_create");
    DECLARE_LIBBPF_OPTS(bpf_iter_attach_opts, opts);
    union bpf_iter_link_info linfo;
    memset(&linfo, 0, sizeof linfo);
    if (map_fd >= 0) {
      linfo.map.map_fd = map_fd;
      opts.link_info = &linfo;
      opts.link_info_len = sizeof linfo;
    }
    std::string what = map_name.empty() ? "iterator" : "iterator over map " + map_name;
    if (!netns.empty()) what += " in network namespace " + netns;
    bpf_link* link = bpf_program__attach_iter(prog_, &opts);
    if (!link) throw BpfError(env, errno, "bpf_link_create", ProgramSubject(name_), what);
    int link_fd = bpf_link__fd(link);
    int err = 0;
    const char* syscall = "";
    std::string out;
    std::thread worker([&]() {
      if (!netns.empty()) {
        int ns_fd = open(netns.c_str(), O_RDONLY | O_CLOEXEC);
        if (ns_fd < 0) {
          err = errno, syscall = "open";
          return;
        }
        int rc = setns(ns_fd, CLONE_NEWNET);
        if (rc) err = errno, syscall = "setns";
        close(ns_fd);
        if (rc) return;
      }
      int iter_fd = bpf_iter_create(link_fd);
      if (iter_fd < 0) {
        err = errno, syscall = "bpf_iter_create";
        return;
      }
      std::vector<char> buf(1 << 16);
      for (;;) {
        ssize_t n = read(iter_fd, buf.data(), buf.size());
        if (n > 0) {
          out.append(buf.data(), static_cast<size_t>(n));
          continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) err = errno, syscall = "read";
        break;
      }
      close(iter_fd);
    });
    worker.join();
    bpf_link__destroy(link);
    if (err) throw BpfError(env, err, syscall, ProgramSubject(name_), what);
    return Napi::Buffer<char>::Copy(env, out.data(), out.size());
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
                        InstanceMethod<&NativeProgram::AttachNetns>("attachNetns"),
                        InstanceMethod<&NativeProgram::DetachSockmap>("detachSockmap"),
                        InstanceMethod<&NativeProgram::Iterate>("iterate"),
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

// attachedPrograms(cgroupPath | map, attachType): the programs attached there, each with its id, kernel
// name and, on a cgroup, whether it came through a bpf_link or BPF_PROG_ATTACH.
Napi::Value AttachedPrograms(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string type_name = info[1].As<Napi::String>();
  bpf_attach_type type;
  if (!ParseAttachType(type_name, &type)) throw Napi::TypeError::New(env, "unknown attach type " + type_name);
  std::vector<__u32> ids, linked;
  bool is_cgroup = info[0].IsString();
  if (is_cgroup) {
    std::string path = info[0].As<Napi::String>();
    CgroupFd cg(env, path, "open", PathSubject(path));
    struct stat st;
    if (fstat(cg.fd, &st)) throw BpfError(env, errno, "fstat", PathSubject(path));
    int err = QueryProgIds(cg.fd, type, &ids);
    if (err) throw BpfError(env, err, "bpf_prog_query", PathSubject(path), type_name);
    linked = CgroupLinkProgIds(st.st_ino, type);
  } else {
    std::string map_name;
    int map_fd = MapFdOf(env, info[0], &map_name);
    int err = QueryProgIds(map_fd, type, &ids);
    if (err) throw BpfError(env, err, "bpf_prog_query", MapSubject(map_name), type_name);
  }
  Napi::Array out = Napi::Array::New(env, ids.size());
  for (size_t i = 0; i < ids.size(); i++) {
    Napi::Object p = Napi::Object::New(env);
    p.Set("id", ids[i]);
    int fd = bpf_prog_get_fd_by_id(ids[i]);
    bpf_prog_info pi;
    memset(&pi, 0, sizeof pi);
    __u32 len = sizeof pi;
    if (fd >= 0 && bpf_obj_get_info_by_fd(fd, &pi, &len) == 0) p.Set("name", pi.name);
    if (fd >= 0) close(fd);
    if (is_cgroup) {
      bool via_link = std::find(linked.begin(), linked.end(), ids[i]) != linked.end();
      p.Set("via", via_link ? "bpf_link" : "prog_attach");
    }
    out.Set(i, p);
  }
  return out;
}

Napi::Function InitProgram(Napi::Env env) { return NativeProgram::Define(env); }
Napi::Function InitLink(Napi::Env env) { return NativeLink::Define(env); }

}  // namespace kernmesh
