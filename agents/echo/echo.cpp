#include "agents/echo/echo.h"

#include <openssl/evp.h>

#include <algorithm>

#include "spop/reader.h"
#include "util/text.h"

namespace spoad::agents::echo {

namespace {

spop::Scope parse_scope(config::Options& o) {
  const std::string s = o.str("scope", "txn");
  if (s == "proc") return spop::Scope::kProcess;
  if (s == "sess") return spop::Scope::kSession;
  if (s == "txn") return spop::Scope::kTransaction;
  if (s == "req") return spop::Scope::kRequest;
  if (s == "res") return spop::Scope::kResponse;
  o.fail("scope", "expected proc, sess, txn, req or res, got \"" + s + "\"");
}

std::unique_ptr<agent::AgentOptions> parse(config::Options& o) {
  auto opts = std::make_unique<EchoOptions>();
  opts->scope = parse_scope(o);
  opts->echo_max_size = o.size("echo-max-size", opts->echo_max_size, 0, 1 << 20);
  opts->delay_ms = o.duration_ms("delay", 0, 0, 60'000);
  return opts;
}

std::unique_ptr<agent::Agent> create(const agent::Context& ctx, const agent::AgentOptions& o) {
  return std::make_unique<EchoAgent>(ctx, static_cast<const EchoOptions&>(o));
}

}  // namespace

SPOAD_REGISTER_AGENT(echo, "echo",
                     "diagnostic: sends each argument back with its type, length and digest", parse,
                     create);

std::string sha256_hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  return util::hex_encode(md, len);
}

EchoAgent::EchoAgent(const agent::Context& ctx, const EchoOptions& opts) : ctx_(ctx), opts_(opts) {}

EchoAgent::~EchoAgent() {
  // Hard-stop with ACKs still held: the connections are gone; let the ACKs go. holds_ then
  // closes the timers, whose boxes outlive us until libuv has closed them.
  for (Holds::Box* b : holds_.boxes())
    if (!b->closing()) b->extra.complete();
}

void EchoAgent::on_message(const spop::Message& msg, agent::Reply& reply) {
  ++messages_;
  const spop::Scope sc = opts_.scope;
  reply.set_var(sc, "msg", spop::Value::String(msg.name));
  reply.set_var(sc, "nargs", spop::Value::Int32(msg.nargs));
  uint64_t delay = opts_.delay_ms;
  size_t i = 0;
  for (const spop::KV& kv : spop::args(msg)) {
    const std::string name = kv.name.empty() ? "arg" + std::to_string(i) : std::string(kv.name);
    ++i;
    const spop::Value& v = kv.value;
    if (name == "delay_ms" && v.is_integer()) {
      delay = static_cast<uint64_t>(std::max<int64_t>(0, v.as_int64()));
      continue;
    }
    reply.set_var(sc, name + "_type", spop::Value::String(spop::type_name(v.type)));
    if (v.is_text()) {
      reply.set_var(sc, name + "_len", spop::Value::Int64(static_cast<int64_t>(v.bytes.size())));
      reply.set_var(sc, name + "_sha256", spop::Value::String(sha256_hex(v.bytes)));
      if (v.bytes.size() > opts_.echo_max_size) continue;
    }
    reply.set_var(sc, name, v);
  }
  if (delay == 0 || !ctx_.loop) return;
  ++deferred_;
  Holds::Box* b = holds_.make();
  b->extra = reply.defer();
  uv_timer_init(ctx_.loop, &b->u.timer);
  uv_timer_start(&b->u.timer, on_timer, delay, 0);
}

void EchoAgent::on_timer(uv_timer_t* t) {
  Holds::Box* b = Holds::Box::from(t);
  if (!b->live()) return;
  b->extra.complete();  // the ACK leaves now
  b->owner()->holds_.close(b);
}

void EchoAgent::on_hold_closed(Holds::Box*) {
  finish_stop_if_idle();
}

void EchoAgent::stop(std::function<void()> done) {
  stop_done_ = std::move(done);
  finish_stop_if_idle();
}

void EchoAgent::finish_stop_if_idle() {
  if (!stop_done_ || !holds_.empty()) return;
  auto cb = std::move(stop_done_);
  stop_done_ = nullptr;
  cb();
}

void EchoAgent::stats(nlohmann::json& out) const {
  out["messages"] = messages_;
  out["deferred"] = deferred_;
  out["holding"] = holds_.size();
}

}  // namespace spoad::agents::echo
