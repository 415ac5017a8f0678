// RingBuffer: consumes a BPF ring buffer on Node's event loop. libbpf's epoll fd becomes readable
// when records are pending; a uv_poll_t watches it, so there is neither a thread nor busy polling.
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <uv.h>

#include "common.h"

namespace kernmesh {

namespace {

// Lives on the heap until uv has closed the poll handle, which may be after the JS object is gone.
struct Consumer {
  uv_poll_t poll;
  ring_buffer* rb = nullptr;
  int map_fd = -1;
  napi_env env = nullptr;
  Napi::FunctionReference on_record;
  Napi::ObjectReference resource;
  std::string map_name;
  bool failed = false;
};

class NativeRingBuffer : public Napi::ObjectWrap<NativeRingBuffer> {
 public:
  // new NativeRingBuffer(map, onRecord)
  explicit NativeRingBuffer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeRingBuffer>(info) {
    Napi::Env env = info.Env();
    std::string map_name;
    int map_fd = MapFdOf(env, info[0], &map_name);
    if (!info[1].IsFunction()) throw Napi::TypeError::New(env, "RingBuffer needs a record callback");

    auto* c = new Consumer();
    c->env = env;
    c->map_name = map_name;
    // Our own fd, so the ring buffer outlives a close() of the map handle it came from.
    c->map_fd = fcntl(map_fd, F_DUPFD_CLOEXEC, 0);
    if (c->map_fd < 0) {
      int err = errno;
      delete c;
      throw BpfError(env, err, "fcntl", MapSubject(map_name));
    }
    WarningCapture warnings;
    c->rb = ring_buffer__new(c->map_fd, OnSample, c, nullptr);
    if (!c->rb) {
      int err = errno;
      close(c->map_fd);
      delete c;
      throw BpfError(env, err, "ring_buffer__new", MapSubject(map_name), warnings.Summary());
    }
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    int err = uv_poll_init(loop, &c->poll, ring_buffer__epoll_fd(c->rb));
    if (err == 0) err = uv_poll_start(&c->poll, UV_READABLE, OnReadable);
    if (err) {
      ring_buffer__free(c->rb);
      close(c->map_fd);
      delete c;
      throw BpfError(env, -err, "uv_poll_start", MapSubject(map_name));
    }
    c->poll.data = c;
    c->on_record = Napi::Persistent(info[1].As<Napi::Function>());
    c->resource = Napi::Persistent(Napi::Object::New(env));
    consumer_ = c;
    // Delivering records keeps this object alive until close(), like a listening socket.
    Ref();
  }
  ~NativeRingBuffer() override { Stop(); }

 private:
  static int OnSample(void* ctx, void* data, size_t size) {
    auto* c = static_cast<Consumer*>(ctx);
    Napi::Env env(c->env);
    Napi::HandleScope scope(env);
    try {
      Napi::Buffer<uint8_t> record = Napi::Buffer<uint8_t>::Copy(env, static_cast<uint8_t*>(data), size);
      c->on_record.MakeCallback(c->resource.Value(), {record});
    } catch (const Napi::Error& e) {
      // A throwing callback is the application's uncaught exception, as with an event handler.
      napi_fatal_exception(c->env, e.Value());
      return -1;
    }
    return 0;
  }

  static void OnReadable(uv_poll_t* handle, int status, int events) {
    auto* c = static_cast<Consumer*>(handle->data);
    if (!c->rb) return;
    if (status < 0) {
      Napi::Env env(c->env);
      Napi::HandleScope scope(env);
      napi_fatal_exception(c->env, BpfError(env, -status, "uv_poll", MapSubject(c->map_name)).Value());
      uv_poll_stop(handle);
      return;
    }
    ring_buffer__consume(c->rb);
  }

  void Stop() {
    Consumer* c = consumer_;
    consumer_ = nullptr;
    if (!c) return;
    uv_poll_stop(&c->poll);
    // libbpf's epoll fd must stay open until uv has let go of it.
    uv_close(reinterpret_cast<uv_handle_t*>(&c->poll), [](uv_handle_t* h) {
      auto* c = static_cast<Consumer*>(h->data);
      ring_buffer__free(c->rb);
      close(c->map_fd);
      delete c;
    });
    c->on_record.Reset();
    c->resource.Reset();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (consumer_) {
      Stop();
      Unref();
    }
    return info.Env().Undefined();
  }

  // Consumes what is pending now (for callers that want records before returning to the loop).
  Napi::Value Consume(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!consumer_) throw BpfError(env, EBADF, "ring_buffer__consume", MapSubject(""), "ring buffer is closed");
    int n = ring_buffer__consume(consumer_->rb);
    if (n < 0 && !consumer_) return Napi::Number::New(env, 0);
    if (n < 0) throw BpfError(env, -n, "ring_buffer__consume", MapSubject(consumer_->map_name));
    return Napi::Number::New(env, n);
  }

  // Lets the process exit while the ring buffer is still open.
  Napi::Value UnrefLoop(const Napi::CallbackInfo& info) {
    if (consumer_) uv_unref(reinterpret_cast<uv_handle_t*>(&consumer_->poll));
    return info.Env().Undefined();
  }

  Consumer* consumer_ = nullptr;

 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeRingBuffer",
                       {InstanceMethod<&NativeRingBuffer::Close>("close"),
                        InstanceMethod<&NativeRingBuffer::Consume>("consume"),
                        InstanceMethod<&NativeRingBuffer::UnrefLoop>("unref")});
  }
};

}  // namespace

Napi::Function InitRingBuffer(Napi::Env env) { return NativeRingBuffer::Define(env); }

}  // namespace kernmesh
