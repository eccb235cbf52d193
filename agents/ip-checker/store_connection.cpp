// The ip-checker's shared store in Redis (store.h, store_impl.h): its two connections (DNS,
// connect, AUTH, SELECT, SUBSCRIBE), the commands sent on them, and the callbacks of hiredis.
// The Store's state, timers and backoff are in store.cpp.
//
// Lifetimes. Each hiredis context's `data` points to its Conn while we own the context; before
// we free a context (or when hiredis frees it after a failed connect or a lost connection) that
// pointer is cleared, so a callback of a dying context does nothing. Every command callback
// owns its Pending (hiredis calls it exactly once: with the reply, or with NULL when the
// context is freed). The DNS request is a heap object that outlives the Store when its cancel
// is still on its way. The libuv adapter closes and frees its poll handle itself. Every
// callback from hiredis or libuv catches all exceptions.
#include <arpa/inet.h>
#include <hiredis/adapters/libuv.h>

#include <memory>

#include "agents/ip-checker/store_impl.h"
#include "util/escape.h"

namespace spoad::agents::ip_checker {

using namespace store_detail;

namespace {

// hiredis 0.14's libuv adapter ignores a poll error, and libuv reports a socket error (a
// refused connect, a reset) as status UV_EBADF with the watcher stopped: a refused connect
// would wait for the connect timeout. These hooks wrap the adapter's and, on such an error,
// let hiredis read the socket, which reports the error and frees the context.
void on_poll(uv_poll_t* h, int status, int events) {
  auto* p = static_cast<redisLibuvEvents*>(h->data);
  if (status < 0) {
    if (p->context) redisAsyncHandleRead(p->context);
    return;
  }
  redisLibuvPoll(h, status, events);
}
void rearm(void* d) {
  auto* p = static_cast<redisLibuvEvents*>(d);
  if (p->events) uv_poll_start(&p->handle, p->events, &on_poll);
}
void add_read(void* d) {
  redisLibuvAddRead(d), rearm(d);
}
void del_read(void* d) {
  redisLibuvDelRead(d), rearm(d);
}
void add_write(void* d) {
  redisLibuvAddWrite(d), rearm(d);
}
void del_write(void* d) {
  redisLibuvDelWrite(d), rearm(d);
}

bool attach(redisAsyncContext* ac, uv_loop_t* loop) {
  if (redisLibuvAttach(ac, loop) != REDIS_OK) {
    ac->ev = {};  // the adapter may have set its hooks without its data
    return false;
  }
  ac->ev.addRead = &add_read;
  ac->ev.delRead = &del_read;
  ac->ev.addWrite = &add_write;
  ac->ev.delWrite = &del_write;
  return true;
}

}  // namespace

void Store::Impl::start() {
  if (state != State::kIdle) return;
  attempt();
}

void Store::Impl::attempt() {
  state = State::kConnecting;
  uv_timer_start(&phase_timer->u.timer, &on_phase_timer, kConnectTimeoutMs, 0);
  in6_addr a6;
  in_addr a4;
  if (url.v6 || inet_pton(AF_INET, url.host.c_str(), &a4) == 1 ||
      inet_pton(AF_INET6, url.host.c_str(), &a6) == 1) {
    connect(url.host);
    return;
  }
  resolve = new Resolve{};
  resolve->impl = this;
  resolve->req.data = resolve;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  const int rc =
      uv_getaddrinfo(loop, &resolve->req, &on_resolved, url.host.c_str(), nullptr, &hints);
  if (rc != 0) {
    delete resolve;
    resolve = nullptr;
    fail(std::string("cannot resolve ") + url.host + ": " + uv_strerror(rc));
  }
}

void Store::Impl::on_resolved(uv_getaddrinfo_t* req, int status, addrinfo* res) {
  auto* r = static_cast<Resolve*>(req->data);
  Impl* self = r->impl;
  // The first IPv4 address, else the first IPv6 one (as hiredis itself prefers).
  std::string ip4, ip6;
  for (addrinfo* ai = status == 0 ? res : nullptr; ai; ai = ai->ai_next) {
    char buf[INET6_ADDRSTRLEN] = {};
    if (ai->ai_family == AF_INET && ip4.empty() &&
        inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_addr, buf,
                  sizeof(buf)))
      ip4 = buf;
    else if (ai->ai_family == AF_INET6 && ip6.empty() &&
             inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(ai->ai_addr)->sin6_addr, buf,
                       sizeof(buf)))
      ip6 = buf;
  }
  const std::string ip = ip4.empty() ? ip6 : ip4;
  uv_freeaddrinfo(res);
  delete r;
  if (!self) return;
  self->resolve = nullptr;
  try {
    if (status != 0)
      self->fail("cannot resolve " + self->url.host + ": " + uv_strerror(status));
    else if (ip.empty())
      self->fail("no address for " + self->url.host);
    else
      self->connect(ip);
  } catch (...) {
    self->log->error("store {}: connect failed with an exception", self->shown);
  }
}

void Store::Impl::connect(const std::string& ip) {
  for (Conn* c : {&cmd, &sub}) {
    redisAsyncContext* ac = redisAsyncConnect(ip.c_str(), url.port);
    if (!ac) return fail("out of memory");
    if (ac->err) {
      std::string e = ac->errstr;
      redisAsyncFree(ac);
      return fail("connect: " + e);
    }
    redisEnableKeepAlive(&ac->c);
    if (!attach(ac, loop)) {
      redisAsyncFree(ac);
      return fail("cannot attach the connection to the loop");
    }
    unref_conn(ac);
    ac->data = c;
    c->ac = ac;
    c->ready = false;
    redisAsyncSetConnectCallback(ac, &on_connect);
    redisAsyncSetDisconnectCallback(ac, &on_disconnect);
    bool ok = true;
    if (!url.password.empty()) {
      if (url.user.empty())
        ok = send(*c, Op::kAuth, {"AUTH", url.password});
      else
        ok = send(*c, Op::kAuth, {"AUTH", url.user, url.password});
    }
    if (c == &cmd) {
      if (ok && url.db != 0) ok = send(cmd, Op::kSelect, {"SELECT", std::to_string(url.db)});
      if (ok) ok = send(cmd, Op::kReady, {"PING"});
    } else if (ok) {
      const char* argv[] = {"SUBSCRIBE", channel.data()};
      const size_t lens[] = {9, channel.size()};
      ok = redisAsyncCommandArgv(sub.ac, &on_sub_reply, nullptr, 2, argv, lens) == REDIS_OK;
    }
    if (!ok) return fail("cannot send the first commands");
  }
}

bool Store::Impl::send(Conn& c, Op op, const std::vector<std::string>& args,
                       std::vector<std::string> keys) {
  if (!c.ac) return false;
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  argv.reserve(args.size() + keys.size());
  lens.reserve(args.size() + keys.size());
  for (const auto& a : args)
    argv.push_back(a.data()), lens.push_back(a.size());
  for (const auto& k : keys)
    argv.push_back(k.data()), lens.push_back(k.size());
  auto* p = new Pending{op, std::move(keys)};
  if (redisAsyncCommandArgv(c.ac, &on_reply, p, static_cast<int>(argv.size()), argv.data(),
                            lens.data()) != REDIS_OK) {
    delete p;
    return false;
  }
  return true;
}

bool Store::Impl::send_plain(const std::vector<std::string>& args) {
  if (!cmd.ac) return false;
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  for (const auto& a : args)
    argv.push_back(a.data()), lens.push_back(a.size());
  return redisAsyncCommandArgv(cmd.ac, nullptr, nullptr, static_cast<int>(argv.size()), argv.data(),
                               lens.data()) == REDIS_OK;
}

void Store::Impl::on_connect(const redisAsyncContext* ac, int status) {
  auto* c = static_cast<Conn*>(ac->data);
  if (!c || status == REDIS_OK) return;
  c->ac = nullptr;  // hiredis frees the context after this callback
  try {
    c->impl->fail(std::string("connect: ") + (ac->errstr ? ac->errstr : "failed"));
  } catch (...) {
  }
}

void Store::Impl::on_disconnect(const redisAsyncContext* ac, int) {
  auto* c = static_cast<Conn*>(ac->data);
  if (!c) return;
  c->ac = nullptr;  // hiredis frees the context after this callback
  try {
    c->impl->fail(std::string(c->sub ? "subscriber" : "command") +
                  " connection lost: " + (ac->err && ac->errstr ? ac->errstr : "closed"));
  } catch (...) {
  }
}

void Store::Impl::on_reply(redisAsyncContext* ac, void* r, void* privdata) {
  std::unique_ptr<Pending> p(static_cast<Pending*>(privdata));
  auto* c = static_cast<Conn*>(ac->data);
  if (!c || !r || !p) return;  // a context being freed: its loss is handled elsewhere
  Impl* self = c->impl;
  try {
    self->handle_reply(*c, *p, static_cast<redisReply*>(r));
  } catch (const std::exception& e) {
    self->log->error("store {}: reply handling failed: {}", self->shown, e.what());
    self->fail_later("reply handling failed");
  } catch (...) {
    self->fail_later("reply handling failed");
  }
}

void Store::Impl::on_sub_reply(redisAsyncContext* ac, void* r, void*) {
  auto* c = static_cast<Conn*>(ac->data);
  if (!c || !r) return;
  Impl* self = c->impl;
  try {
    self->handle_sub(static_cast<redisReply*>(r));
  } catch (const std::exception& e) {
    self->log->error("store {}: message handling failed: {}", self->shown, e.what());
  } catch (...) {
  }
}

void Store::Impl::handle_reply(Conn& c, Pending& p, redisReply* r) {
  static const char* const kNames[] = {"AUTH", "SELECT", "PING", "PING",
                                       "SCAN", "MGET",   "EXEC", "SCAN"};
  const char* name = kNames[static_cast<int>(p.op)];
  if (r->type == REDIS_REPLY_ERROR && p.op != Op::kExec && p.op != Op::kClearScan)
    return fail(std::string(c.sub ? "subscriber " : "") + name + ": " +
                util::printable(reply_text(r), 200));
  switch (p.op) {
    case Op::kAuth:
    case Op::kSelect:
      return;
    case Op::kReady:
      c.ready = true;
      return resync_if_ready();
    case Op::kPing:
      ping_out = false;
      return;
    case Op::kScan:
      return on_scan(r);
    case Op::kMget:
      return on_mget(p, r);
    case Op::kExec:
      return on_exec(r);
    case Op::kClearScan:
      return on_clear_scan(r);
  }
}

void Store::Impl::teardown_session() {
  if (resolve) {
    resolve->impl = nullptr;
    uv_cancel(reinterpret_cast<uv_req_t*>(&resolve->req));
    resolve = nullptr;
  }
  for (Conn* c : {&cmd, &sub}) {
    c->ready = false;
    if (redisAsyncContext* ac = c->ac) {
      c->ac = nullptr;
      ac->data = nullptr;
      redisAsyncFree(ac);  // runs its pending callbacks with NULL, which do nothing
    }
  }
  if (ping_timer) uv_timer_stop(&ping_timer->u.timer);
  ping_out = false;
  Resync empty;
  std::swap(rs, empty);
  const size_t lost = in_flight + queued.size();
  if (lost) {
    write_failures += lost;
    log->warn("store {}: {} write(s) not confirmed by Redis before the connection closed{}", shown,
              lost, stopping ? "" : "; the resync after reconnecting shows what Redis holds");
  }
  in_flight = 0;
  queued.clear();
  clearing = false;
  deferred_failure.clear();
}

void Store::Impl::unref_conn(redisAsyncContext* ac) {
  if (!detached || !ac->ev.data) return;
  // The adapter's poll handle: an unref'd handle stays so across uv_poll_start/stop.
  uv_unref(reinterpret_cast<uv_handle_t*>(&static_cast<redisLibuvEvents*>(ac->ev.data)->handle));
}

}  // namespace spoad::agents::ip_checker
