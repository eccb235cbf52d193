// Tests of the ip-checker's shared store: the text formats (exact forms, and random bytes
// through the parsers), the `store:` options, and Store against a real redis-server started on
// a free port in a temporary directory (skipped, visibly, when redis-server is not installed).
// Every wait runs the loop until the event itself happened (run_until); its deadline only
// guards against a hang.
#include "agents/ip-checker/store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "config/options.h"
#include "tests/unit/test_http_server.h"
#include "util/log.h"

namespace spoad::agents::ip_checker {
namespace {

using spoad::testing::kGuardMs;
using spoad::testing::run_until;
using spoad::testing::TestLoop;
namespace fmt_ = store_format;

RuntimeEntry entry(const std::string& list, const std::string& prefix, bool allow = false,
                   uint8_t score = 50, int64_t expires_s = 0, std::string comment = "") {
  RuntimeEntry e;
  e.list = list;
  bool masked = false;
  const char* why = nullptr;
  EXPECT_TRUE(parse_prefix(prefix, &e.prefix, &masked, &why)) << prefix;
  e.allow = allow;
  e.score = allow ? 0 : score;
  e.expires_s = expires_s;
  e.comment = std::move(comment);
  return e;
}

Change add(RuntimeEntry e) {
  return Change{Change::Kind::kAdd, std::move(e)};
}
Change del(const std::string& list, const std::string& prefix) {
  return Change{Change::Kind::kDel, entry(list, prefix, false, 0)};
}
Change clear(const std::string& list) {
  Change c{Change::Kind::kClear, {}};
  c.entry.list = list;
  return c;
}

int64_t now_s() {
  return static_cast<int64_t>(::time(nullptr));
}

// ---- formats ----

TEST(StoreFormat, ExactForms) {
  const RuntimeEntry e = entry("deny", "192.0.2.0/24", false, 70, 1700000000, "hi");
  EXPECT_EQ(fmt_::entry_key("spoad:", e), "spoad:entry:deny:192.0.2.0/24");
  EXPECT_EQ(fmt_::entry_value(e), "d 70 1700000000 6869");
  EXPECT_EQ(fmt_::entry_value(entry("ok", "2001:db8::/32", true)), "a 0 0");
  EXPECT_EQ(fmt_::change_message(0x1234, add(e)),
            "0000000000001234 add deny 192.0.2.0/24 d 70 1700000000 6869");
  EXPECT_EQ(fmt_::change_message(~uint64_t{0}, del("deny", "2001:db8::1")),
            "ffffffffffffffff del deny 2001:db8::1/128");
  EXPECT_EQ(fmt_::change_message(1, clear("deny")), "0000000000000001 clear deny");

  RuntimeEntry back;
  std::string why;
  ASSERT_TRUE(fmt_::parse_entry("spoad:", "spoad:entry:deny:192.0.2.0/24", "d 70 1700000000 6869",
                                &back, &why))
      << why;
  EXPECT_EQ(back, e);
  uint64_t origin = 0;
  Change c;
  ASSERT_TRUE(fmt_::parse_change_message(
      "00000000000000ab add deny 192.0.2.0/24 d 70 1700000000 6869", &origin, &c, &why));
  EXPECT_EQ(origin, 0xabu);
  EXPECT_EQ(c, add(e));
  // Binary comments travel as hex.
  const RuntimeEntry bin = entry("deny", "10.0.0.0/8", false, 1, 0, std::string("\0\xff\"\n", 4));
  ASSERT_TRUE(
      fmt_::parse_entry("p", fmt_::entry_key("p", bin), fmt_::entry_value(bin), &back, &why));
  EXPECT_EQ(back, bin);
}

TEST(StoreFormat, RejectsWhatTheWriterNeverProduces) {
  const char* bad_values[] = {
      "",           "d",       "d 70",    "x 70 0",       "d 101 0",
      "d 070 0",    "d 70 01", "d 70 0 ", "d  70 0",      "d 70 0 6A",
      "d 70 0 686", "d -1 0",  "d 70 -5", "d 70 0 68 69", "d 70 99999999999999999999",
      "d 70 0\n",   "D 70 0",  "d +7 0",
  };
  RuntimeEntry e;
  std::string why;
  for (const char* v : bad_values)
    EXPECT_FALSE(fmt_::parse_entry("spoad:", "spoad:entry:deny:192.0.2.0/24", v, &e, &why)) << v;
  const char* bad_keys[] = {
      "spoad:entry:deny:192.0.2.1/24",  // host bits set
      "spoad:entry:deny:192.0.2.0",     // not as to_string prints it
      "spoad:entry:deny:",
      "spoad:entry::192.0.2.0/24",
      "spoad:entry:de ny:192.0.2.0/24",
      "other:entry:deny:192.0.2.0/24",
      "spoad:entry:deny",
      "spoad:entry:deny:2001:DB8::/32",
  };
  for (const char* k : bad_keys)
    EXPECT_FALSE(fmt_::parse_entry("spoad:", k, "d 1 0", &e, &why)) << k;
  // A comment longer than kMaxComment.
  EXPECT_FALSE(fmt_::parse_entry("spoad:", "spoad:entry:deny:192.0.2.0/24",
                                 "d 1 0 " + std::string(2 * kMaxComment + 2, 'a'), &e, &why));
  EXPECT_TRUE(fmt_::parse_entry("spoad:", "spoad:entry:deny:192.0.2.0/24",
                                "d 1 0 " + std::string(2 * kMaxComment, 'a'), &e, &why));
  const char* bad_messages[] = {
      "",
      "0000000000000001",
      "0000000000000001 clear",
      "000000000000001 clear deny",
      "00000000000000010 clear deny",
      "000000000000000G clear deny",
      "0000000000000001 clear deny extra",
      "0000000000000001 del deny",
      "0000000000000001 del deny 192.0.2.0/24 d 1 0",
      "0000000000000001 add deny 192.0.2.0/24",
      "0000000000000001 add deny 192.0.2.0/24 d 1",
      "0000000000000001 put deny 192.0.2.0/24 d 1 0",
      "0000000000000001  clear deny",
  };
  uint64_t origin = 0;
  Change c;
  for (const char* m : bad_messages)
    EXPECT_FALSE(fmt_::parse_change_message(m, &origin, &c, &why)) << m;
}

// Random bytes, and random edits of valid texts, through both parsers: no crash (the sanitized
// build checks reads), and whatever parses is written back byte for byte.
TEST(StoreFormat, RandomBytes) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const std::string alphabet = "0123456789abcdef adcelr:./x\xff\n";
  const std::vector<std::string> valid_messages = {
      "0123456789abcdef add deny 192.0.2.0/24 d 70 1700000000 6869",
      "0123456789abcdef add a.b-c_D 2001:db8::/32 a 0 0",
      "0123456789abcdef del deny 10.0.0.0/8",
      "0123456789abcdef clear deny",
  };
  const std::vector<std::pair<std::string, std::string>> valid_entries = {
      {"p:entry:deny:192.0.2.0/24", "d 70 1700000000 6869"},
      {"p:entry:allow:2001:db8::/32", "a 0 0"},
  };
  auto random_text = [&](size_t max) {
    std::string s(rng() % (max + 1), '\0');
    for (char& c : s)
      c = rng() % 4 == 0 ? static_cast<char>(rng()) : alphabet[rng() % alphabet.size()];
    return s;
  };
  auto mutate = [&](std::string s) {
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int i = 0; i < edits; ++i) {
      const size_t at = s.empty() ? 0 : rng() % s.size();
      switch (rng() % 3) {
        case 0:
          if (!s.empty()) s[at] = alphabet[rng() % alphabet.size()];
          break;
        case 1:
          s.insert(s.begin() + static_cast<long>(at), alphabet[rng() % alphabet.size()]);
          break;
        default:
          if (!s.empty()) s.erase(at, 1);
      }
    }
    return s;
  };
  int parsed_messages = 0, parsed_entries = 0;
  for (int i = 0; i < 100000; ++i) {
    const std::string m = i % 2 ? random_text(120) : mutate(valid_messages[rng() % 4]);
    uint64_t origin = 0;
    Change c;
    std::string why;
    if (fmt_::parse_change_message(m, &origin, &c, &why)) {
      ++parsed_messages;
      ASSERT_EQ(fmt_::change_message(origin, c), m);
    }
    const auto& [k0, v0] = valid_entries[rng() % 2];
    const std::string key = i % 3 == 0 ? random_text(60) : i % 3 == 1 ? mutate(k0) : k0;
    const std::string value = i % 3 == 2 ? mutate(v0) : i % 3 == 0 ? random_text(40) : v0;
    RuntimeEntry e;
    if (fmt_::parse_entry("p:", key, value, &e, &why)) {
      ++parsed_entries;
      ASSERT_EQ(fmt_::entry_key("p:", e), key);
      ASSERT_EQ(fmt_::entry_value(e), value);
    }
  }
  // The edits left some texts valid, so the round trip above was exercised.
  EXPECT_GT(parsed_messages, 0);
  EXPECT_GT(parsed_entries, 0);
}

// ---- options ----

StoreOptions parse_yaml(const std::string& text) {
  config::Options o(YAML::Load(text), std::make_shared<const std::string>("spoad.yaml"),
                    "agents[0]");
  return parse_store_options(o);
}

TEST(StoreOptions, Parse) {
  EXPECT_EQ(parse_yaml("name: x\n").url, "");
  StoreOptions s = parse_yaml(
      "store:\n  url: redis://:s%40cret@127.0.0.1:6380/2\n  key-prefix: \"fleet:\"\n"
      "  max-entries: 10\n  max-bytes: 4m\n");
  EXPECT_EQ(s.url, "redis://:s%40cret@127.0.0.1:6380/2");
  EXPECT_EQ(s.key_prefix, "fleet:");
  EXPECT_EQ(s.max_entries, 10u);
  EXPECT_EQ(s.max_bytes, 4u << 20);
  s = parse_yaml("store: {url: \"redis://[::1]\"}\n");
  EXPECT_EQ(s.key_prefix, "spoad:");
  EXPECT_EQ(s.max_entries, 2'000'000u);
  EXPECT_NO_THROW(parse_yaml("store: {url: \"redis://user:pw@cache.example:6379\"}"));
}

TEST(StoreOptions, ErrorsNameFileLineAndKey) {
  struct Case {
    std::string yaml, key, words;
  };
  const std::vector<Case> cases = {
      {"store:\n  url: rediss://h:6379/0\n", "agents[0].store.url", "TLS"},
      {"store:\n  url: http://h/\n", "agents[0].store.url", "redis://"},
      {"store:\n  url: redis://h:0/0\n", "agents[0].store.url", "port"},
      {"store:\n  url: redis://h:70000/0\n", "agents[0].store.url", "port"},
      {"store:\n  url: redis://h:6379/x\n", "agents[0].store.url", "database"},
      {"store:\n  url: redis://h/0?ssl=1\n", "agents[0].store.url", "query"},
      {"store:\n  url: redis://pw@h/0\n", "agents[0].store.url", "password"},
      {"store:\n  url: redis://[::1/0\n", "agents[0].store.url", "]"},
      {"store:\n  url: redis://h\n  key-prefix: \"a b\"\n", "agents[0].store.key-prefix", "spaces"},
      {"store:\n  url: redis://h\n  max-entries: 0\n", "agents[0].store.max-entries", ""},
      {"store:\n  url: redis://h\n  urls: x\n", "agents[0].store.urls", ""},
      {"store:\n  key-prefix: x\n", "agents[0].store", "url"},
      {"store: redis://h\n", "agents[0].store", "mapping"},
  };
  for (const auto& c : cases) {
    try {
      parse_yaml(c.yaml);
      ADD_FAILURE() << "accepted: " << c.yaml;
    } catch (const config::ConfigError& e) {
      EXPECT_EQ(e.file(), "spoad.yaml") << c.yaml;
      EXPECT_EQ(e.key(), c.key) << c.yaml << " -> " << e.what();
      EXPECT_GE(e.line(), 1) << c.yaml;
      EXPECT_NE(e.message().find(c.words), std::string::npos) << e.what();
    }
  }
}

// ---- a real redis-server ----

std::string redis_server_path() {
  if (const char* p = std::getenv("SPOAD_REDIS_SERVER"); p && *p) return p;
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    const std::string f = (dir.empty() ? "." : dir) + "/redis-server";
    if (::access(f.c_str(), X_OK) == 0) return f;
  }
  return "";
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    return 0;
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

using Reply = std::unique_ptr<redisReply, void (*)(void*)>;

// One redis-server process on 127.0.0.1 and a free port, with its data in a temp dir.
class RedisServer {
 public:
  explicit RedisServer(bool appendonly = false, std::string password = "")
      : appendonly_(appendonly), password_(std::move(password)) {
    std::string tmpl = std::string(::testing::TempDir()) + "spoad-redis-XXXXXX";
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    dir_ = tmpl;
    port_ = free_port();
  }
  ~RedisServer() {
    kill9();
    if (ctx_) redisFree(ctx_);
    std::filesystem::remove_all(dir_);
  }

  int port() const { return port_; }
  std::string url(const std::string& auth = "", int db = 0) const {
    return "redis://" + auth + "127.0.0.1:" + std::to_string(port_) + "/" + std::to_string(db);
  }

  // Starts it and waits until it answers PING. False (with the reason added as a failure)
  // if it exits or does not answer within the guard. The first start takes another free port
  // when the server exits at once (another process took the port meanwhile).
  bool start() {
    for (int attempt = 1;; ++attempt) {
      std::string why;
      if (spawn_and_wait(&why)) return started_ = true;
      if (started_ || pid_ > 0 || attempt == 5) {
        ADD_FAILURE() << why << "; port " << port_ << "; its log:\n" << log_text();
        return false;
      }
      port_ = free_port();
    }
  }

  void signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }

  void kill9() {
    if (ctx_) redisFree(ctx_), ctx_ = nullptr;
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  // A command on the test's own synchronous connection (database `db`).
  Reply cmd(const std::vector<std::string>& args) {
    if (!ctx_ && !connect_client()) return Reply(nullptr, freeReplyObject);
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const auto& a : args)
      argv.push_back(a.data()), lens.push_back(a.size());
    void* r = redisCommandArgv(ctx_, static_cast<int>(argv.size()), argv.data(), lens.data());
    if (!r) redisFree(ctx_), ctx_ = nullptr;
    return Reply(static_cast<redisReply*>(r), freeReplyObject);
  }
  std::string get(const std::string& key) {
    Reply r = cmd({"GET", key});
    return r && r->type == REDIS_REPLY_STRING ? std::string(r->str, r->len) : "(none)";
  }
  long long integer(const std::vector<std::string>& args) {
    Reply r = cmd(args);
    return r && r->type == REDIS_REPLY_INTEGER ? r->integer : -999;
  }
  std::vector<std::string> keys(const std::string& pattern) {
    Reply r = cmd({"KEYS", pattern});
    std::vector<std::string> out;
    if (r && r->type == REDIS_REPLY_ARRAY)
      for (size_t i = 0; i < r->elements; ++i)
        out.emplace_back(r->element[i]->str, r->element[i]->len);
    std::sort(out.begin(), out.end());
    return out;
  }
  void select(int db) { cmd({"SELECT", std::to_string(db)}); }

 private:
  bool connect_client() {
    if (ctx_) redisFree(ctx_);
    timeval tv{1, 0};
    ctx_ = redisConnectWithTimeout("127.0.0.1", port_, tv);
    if (!ctx_ || ctx_->err) {
      if (ctx_) redisFree(ctx_);
      ctx_ = nullptr;
      return false;
    }
    if (!password_.empty()) {
      auto* r = static_cast<redisReply*>(redisCommand(ctx_, "AUTH %s", password_.c_str()));
      if (r) freeReplyObject(r);
    }
    return true;
  }
  bool spawn_and_wait(std::string* why) {
    std::vector<std::string> args = {redis_server_path(), "--port", std::to_string(port_)};
    args.insert(args.end(), {"--bind", "127.0.0.1", "--save", "", "--daemonize", "no"});
    args.insert(args.end(), {"--dir", dir_, "--logfile", dir_ + "/redis.log"});
    args.insert(args.end(), {"--appendonly", appendonly_ ? "yes" : "no"});
    args.insert(args.end(), {"--appendfsync", "always"});
    if (!password_.empty()) args.insert(args.end(), {"--requirepass", password_});
    pid_ = ::fork();
    if (pid_ == 0) {
      std::vector<char*> argv;
      for (auto& a : args)
        argv.push_back(a.data());
      argv.push_back(nullptr);
      const int null = ::open("/dev/null", O_RDWR);
      ::dup2(null, 0);
      ::dup2(null, 1);
      ::dup2(null, 2);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kGuardMs);
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        *why = "redis-server exited";
        return false;
      }
      if (connect_client()) {
        Reply r = cmd({"PING"});
        if (r && r->type == REDIS_REPLY_STATUS && std::string(r->str) == "PONG") return true;
      }
      ::poll(nullptr, 0, 20);  // between two polls of the condition
    }
    *why = "redis-server did not answer PING";
    return false;
  }
  std::string log_text() const {
    std::ifstream f(dir_ + "/redis.log");
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

  bool appendonly_;
  std::string password_;
  std::string dir_;
  int port_ = 0;
  pid_t pid_ = -1;
  bool started_ = false;  // answered once (a restart keeps the port)
  redisContext* ctx_ = nullptr;
};

// What a Store's callbacks reported, in order.
struct Seen {
  std::vector<Change> changes;
  std::vector<std::vector<RuntimeEntry>> resyncs;
  std::vector<bool> states;
  std::vector<char> order;  // 'r' resync, 'c' change, 's' state

  Store::Callbacks callbacks() {
    Store::Callbacks cb;
    cb.on_change = [this](const Change& c) {
      changes.push_back(c);
      order.push_back('c');
    };
    cb.on_resync = [this](std::vector<RuntimeEntry> v) {
      std::sort(v.begin(), v.end(), less);
      resyncs.push_back(std::move(v));
      order.push_back('r');
    };
    cb.on_state = [this](bool up) {
      states.push_back(up);
      order.push_back('s');
    };
    return cb;
  }
  static bool less(const RuntimeEntry& a, const RuntimeEntry& b) {
    return fmt_::entry_key("", a) < fmt_::entry_key("", b);
  }
};

std::vector<RuntimeEntry> sorted(std::vector<RuntimeEntry> v) {
  std::sort(v.begin(), v.end(), Seen::less);
  return v;
}

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (redis_server_path().empty())
      GTEST_SKIP() << "redis-server is not installed (apt-get install redis-server, or set "
                      "SPOAD_REDIS_SERVER): the Store tests against Redis are skipped";
  }
  void TearDown() override {
    // Stores stop before the loop drains (TestLoop's destructor checks every handle closed).
    for (auto& s : stores_) {
      if (stopped_.count(s.get())) continue;
      bool done = false;
      s->stop([&] { done = true; });
      EXPECT_TRUE(run_until(loop_.get(), [&] { return done; }));
    }
    stores_.clear();
  }

  Store& make(const std::string& url, Seen* seen, StoreOptions opts = {}) {
    opts.url = url;
    stores_.push_back(std::make_unique<Store>(loop_.get(), opts, util::make_logger("store-test"),
                                              seen->callbacks()));
    stores_.back()->start();
    return *stores_.back();
  }
  bool wait(const std::function<bool()>& pred) { return run_until(loop_.get(), pred); }

  // Owned here, so that they outlive the Stores whose callbacks fill them.
  Seen& seen() { return seen_.emplace_back(); }
  // Owned here, so that the Stores stop before their server goes.
  RedisServer& redis(bool appendonly = false, const std::string& password = "") {
    redis_.push_back(std::make_unique<RedisServer>(appendonly, password));
    return *redis_.back();
  }

  TestLoop loop_;
  std::deque<Seen> seen_;
  std::vector<std::unique_ptr<RedisServer>> redis_;
  std::vector<std::unique_ptr<Store>> stores_;
  std::set<const Store*> stopped_;  // stopped by the test itself
};

TEST_F(StoreTest, WriteReachesOtherStoresNotItself) {
  RedisServer& redis = this->redis();
  ASSERT_TRUE(redis.start());
  Seen& sa = seen();
  Seen& sb = seen();
  Seen& sc = seen();
  Store& a = make(redis.url(), &sa);
  Store& b = make(redis.url(), &sb);
  StoreOptions other;
  other.key_prefix = "other:";
  Store& c = make(redis.url(), &sc, other);
  ASSERT_TRUE(wait([&] { return a.connected() && b.connected() && c.connected(); }));
  EXPECT_EQ(sa.order, std::vector<char>({'r', 's'}));
  EXPECT_EQ(sa.states, std::vector<bool>{true});
  EXPECT_EQ(a.disconnected_since_s(), 0);

  const int64_t exp = now_s() + 3600;
  const RuntimeEntry e1 =
      entry("deny", "192.0.2.0/24", false, 70, exp, std::string("a\0\xff\"", 4));
  std::string err;
  ASSERT_TRUE(a.write(add(e1), &err)) << err;
  ASSERT_TRUE(wait([&] { return sb.changes.size() == 1; }));
  EXPECT_EQ(sb.changes[0], add(e1));
  EXPECT_EQ(redis.get("spoad:entry:deny:192.0.2.0/24"),
            "d 70 " + std::to_string(exp) + " 6100ff22");
  // The key expires when the entry does, to the second.
  EXPECT_EQ(redis.integer({"EXPIRETIME", "spoad:entry:deny:192.0.2.0/24"}), exp);

  // B's write reaches A. A's own announcement came first on the channel, so had it been
  // passed back to A, A would have it before this one.
  const RuntimeEntry e2 = entry("allow", "2001:db8::/32", true);
  ASSERT_TRUE(b.write(add(e2), &err)) << err;
  ASSERT_TRUE(wait([&] { return sa.changes.size() == 1; }));
  EXPECT_EQ(sa.changes[0], add(e2));
  EXPECT_EQ(redis.integer({"TTL", "spoad:entry:allow:2001:db8::/32"}), -1);  // no expiry

  ASSERT_TRUE(a.write(del("deny", "192.0.2.0/24"), &err)) << err;
  ASSERT_TRUE(wait([&] { return sb.changes.size() == 2; }));
  EXPECT_EQ(sb.changes[1], del("deny", "192.0.2.0/24"));
  EXPECT_EQ(redis.integer({"EXISTS", "spoad:entry:deny:192.0.2.0/24"}), 0);
  EXPECT_EQ(b.changes_received(), 2u);
  EXPECT_EQ(a.changes_received(), 1u);
  EXPECT_TRUE(sc.changes.empty());  // another prefix, another channel
  EXPECT_EQ(a.write_failures() + b.write_failures(), 0u);
}

TEST_F(StoreTest, ClearRemovesOneListAndLaterWritesWait) {
  RedisServer& redis = this->redis();
  ASSERT_TRUE(redis.start());
  Seen& sa = seen();
  Seen& sb = seen();
  Store& a = make(redis.url(), &sa);
  Store& b = make(redis.url(), &sb);
  ASSERT_TRUE(wait([&] { return a.connected() && b.connected(); }));
  std::string err;
  for (int i = 0; i < 2500; ++i)  // more than one SCAN batch
    ASSERT_TRUE(a.write(
        add(entry("deny", "10.0." + std::to_string(i / 256) + "." + std::to_string(i % 256))),
        &err))
        << err;
  ASSERT_TRUE(a.write(add(entry("deny2", "192.0.2.0/24")), &err)) << err;
  ASSERT_TRUE(a.write(clear("deny"), &err)) << err;
  // Written right after the clear: must not be deleted by it.
  const RuntimeEntry after = entry("deny", "198.51.100.0/24", false, 9);
  ASSERT_TRUE(a.write(add(after), &err)) << err;
  ASSERT_TRUE(wait([&] { return sb.changes.size() == 2503; }));
  EXPECT_EQ(sb.changes[2501], clear("deny"));
  EXPECT_EQ(sb.changes[2502], add(after));
  EXPECT_EQ(redis.keys("spoad:entry:*"),
            std::vector<std::string>(
                {"spoad:entry:deny2:192.0.2.0/24", "spoad:entry:deny:198.51.100.0/24"}));
  EXPECT_EQ(a.write_failures(), 0u);
}

TEST_F(StoreTest, ResyncReturnsStoredEntriesWithoutExpiredOnes) {
  RedisServer& redis = this->redis();
  ASSERT_TRUE(redis.start());
  const RuntimeEntry forever = entry("deny", "192.0.2.0/24", false, 70);
  const RuntimeEntry later = entry("allow", "2001:db8::/32", true, 0, now_s() + 3600, "hi");
  const RuntimeEntry expired = entry("deny", "198.51.100.7/32", false, 50, now_s() - 10);
  for (const auto& e : {forever, later, expired})  // no Redis TTL: only our check drops it
    redis.cmd({"SET", fmt_::entry_key("spoad:", e), fmt_::entry_value(e)});
  redis.cmd({"SET", "other:entry:deny:203.0.113.0/24", "d 1 0"});
  Seen& s = seen();
  Store& st = make(redis.url(), &s);
  ASSERT_TRUE(wait([&] { return st.connected(); }));
  ASSERT_EQ(s.resyncs.size(), 1u);
  EXPECT_EQ(s.resyncs[0], sorted({forever, later}));
  EXPECT_EQ(st.resyncs(), 1u);
  EXPECT_EQ(st.malformed(), 0u);
}

TEST_F(StoreTest, ChangesDuringResyncComeAfterIt) {
  RedisServer& redis = this->redis();
  ASSERT_TRUE(redis.start());
  // Enough entries for a resync of many round trips.
  for (int i = 0; i < 20000; i += 1000) {
    std::vector<std::string> mset = {"MSET"};
    for (int j = i; j < i + 1000; ++j) {
      const RuntimeEntry e =
          entry("deny", "10." + std::to_string(j / 256 / 256) + "." +
                            std::to_string(j / 256 % 256) + "." + std::to_string(j % 256));
      mset.push_back(fmt_::entry_key("spoad:", e));
      mset.push_back(fmt_::entry_value(e));
    }
    redis.cmd(mset);
  }
  Seen& s = seen();
  Store& st = make(redis.url(), &s);
  int published = 0;
  // Announce a change at every turn of the loop until the Store is up, and a few after.
  ASSERT_TRUE(wait([&] {
    const RuntimeEntry e = entry("deny2", "192.0.2." + std::to_string(published % 256));
    redis.cmd({"PUBLISH", "spoad:changes", fmt_::change_message(7, add(e))});
    ++published;
    return st.connected() && s.changes.size() >= 3;
  }));
  ASSERT_EQ(s.resyncs.size(), 1u);
  EXPECT_EQ(s.resyncs[0].size(), 20000u);
  EXPECT_EQ(s.order[0], 'r');  // every change after the resync
  EXPECT_EQ(std::count(s.order.begin(), s.order.end(), 'r'), 1);
}

TEST_F(StoreTest, GarbageIsSkippedAndCounted) {
  RedisServer& redis = this->redis();
  ASSERT_TRUE(redis.start());
  const RuntimeEntry good = entry("deny", "192.0.2.0/24");
  redis.cmd({"SET", fmt_::entry_key("spoad:", good), fmt_::entry_value(good)});
  redis.cmd({"SET", "spoad:entry:deny:198.51.100.0/24", std::string("garbage\xff\0", 9)});
  redis.cmd({"SET", "spoad:entry:deny:not-an-address", "d 1 0"});
  redis.cmd({"HSET", "spoad:entry:deny:203.0.113.0/24", "f", "v"});  // not a string: MGET nil
  Seen& s = seen();
  Store& st = make(redis.url(), &s);
  ASSERT_TRUE(wait([&] { return st.connected(); }));
  EXPECT_EQ(s.resyncs.at(0), std::vector<RuntimeEntry>{good});
  EXPECT_EQ(st.malformed(), 2u);

  std::mt19937 rng(1);
  std::string noise(300, '\0');
  for (char& c : noise)
    c = static_cast<char>(rng());
  for (const std::string& m :
       {std::string("hello"), noise, std::string("0000000000000007 add deny 1.2.3.4/8 d 1 0"),
        std::string(5000, 'x')})
    redis.cmd({"PUBLISH", "spoad:changes", m});
  const Change valid = add(entry("deny", "1.0.0.0/8"));
  redis.cmd({"PUBLISH", "spoad:changes", fmt_::change_message(7, valid)});
  ASSERT_TRUE(wait([&] { return s.changes.size() == 1; }));
  EXPECT_EQ(s.changes[0], valid);
  EXPECT_EQ(st.malformed(), 6u);
  EXPECT_TRUE(st.connected());
}

TEST_F(StoreTest, KilledThenRestarted) {
  RedisServer& redis = this->redis(/*appendonly=*/true);
  ASSERT_TRUE(redis.start());
  Seen& sa = seen();
  Store& a = make(redis.url(), &sa);
  ASSERT_TRUE(wait([&] { return a.connected(); }));
  const RuntimeEntry e1 = entry("deny", "192.0.2.0/24", false, 70, now_s() + 3600);
  std::string err;
  ASSERT_TRUE(a.write(add(e1), &err)) << err;
  ASSERT_TRUE(wait([&] { return redis.get(fmt_::entry_key("spoad:", e1)) != "(none)"; }));

  const int64_t before_kill = now_s();
  redis.kill9();
  ASSERT_TRUE(wait([&] { return !sa.states.empty() && !sa.states.back(); }));
  EXPECT_FALSE(a.connected());
  EXPECT_GE(a.disconnected_since_s(), before_kill);
  err.clear();
  EXPECT_FALSE(a.write(add(entry("deny", "198.51.100.0/24")), &err));
  EXPECT_NE(err.find("store " + redis.url() + " disconnected since "), std::string::npos) << err;
  EXPECT_EQ(err.back(), 'Z') << err;
  // Retries while it is away.
  ASSERT_TRUE(wait([&] { return a.reconnects() >= 2; }));
  EXPECT_FALSE(a.connected());

  ASSERT_TRUE(redis.start());  // same port, same data
  ASSERT_TRUE(wait([&] { return a.connected(); }));
  EXPECT_EQ(a.resyncs(), 2u);
  ASSERT_EQ(sa.resyncs.size(), 2u);
  EXPECT_EQ(sa.resyncs[1], std::vector<RuntimeEntry>{e1});
  EXPECT_EQ(sa.states, std::vector<bool>({true, false, true}));
  // Subscribed again: a change from another Store arrives.
  Seen& sb = seen();
  Store& b = make(redis.url(), &sb);
  ASSERT_TRUE(wait([&] { return b.connected(); }));
  ASSERT_TRUE(b.write(del("deny", "192.0.2.0/24"), &err)) << err;
  ASSERT_TRUE(wait([&] { return sa.changes.size() == 1; }));
  EXPECT_EQ(sa.changes[0], del("deny", "192.0.2.0/24"));
}

// A server that stops answering (SIGSTOP) while its connections stay open: the unanswered
// PING counts as a lost connection; once it answers again, the Store reconnects.
TEST_F(StoreTest, FrozenServerCountsAsDown) {
  RedisServer& redis = this->redis();
  ASSERT_TRUE(redis.start());
  Seen& s = seen();
  Store& st = make(redis.url(), &s);
  ASSERT_TRUE(wait([&] { return st.connected(); }));
  redis.signal(SIGSTOP);
  ASSERT_TRUE(wait([&] { return !st.connected(); }));
  EXPECT_EQ(s.states, std::vector<bool>({true, false}));
  std::string err;
  EXPECT_FALSE(st.write(add(entry("deny", "192.0.2.0/24")), &err));
  EXPECT_NE(err.find("disconnected since"), std::string::npos) << err;
  redis.signal(SIGCONT);
  ASSERT_TRUE(wait([&] { return st.connected(); }));
  EXPECT_EQ(st.resyncs(), 2u);
}

TEST_F(StoreTest, ResyncOverBudgetIsRefused) {
  RedisServer& redis = this->redis();
  ASSERT_TRUE(redis.start());
  for (int i = 0; i < 10; ++i) {
    const RuntimeEntry e = entry("deny", "192.0.2." + std::to_string(i));
    redis.cmd({"SET", fmt_::entry_key("spoad:", e), fmt_::entry_value(e)});
  }
  Seen& s = seen();
  StoreOptions small;
  small.max_entries = 5;
  Store& st = make(redis.url(), &s, small);
  ASSERT_TRUE(wait([&] { return st.budget_refusals() >= 1; }));
  EXPECT_FALSE(st.connected());
  EXPECT_EQ(st.resyncs(), 0u);
  EXPECT_TRUE(s.resyncs.empty());
}

TEST_F(StoreTest, PasswordAndDatabase) {
  RedisServer& redis = this->redis(false, "s3cret@");
  ASSERT_TRUE(redis.start());
  Seen& s = seen();
  Seen& bad = seen();
  Store& st = make(redis.url(":s3cret%40@", 3), &s);
  Store& wrong = make(redis.url(":nope@", 3), &bad);
  ASSERT_TRUE(wait([&] { return st.connected(); }));
  std::string err;
  const RuntimeEntry e = entry("deny", "192.0.2.0/24");
  ASSERT_TRUE(st.write(add(e), &err)) << err;
  redis.select(3);
  ASSERT_TRUE(wait([&] { return redis.get(fmt_::entry_key("spoad:", e)) != "(none)"; }));
  // A wrong password: refused, retried, never connected.
  ASSERT_TRUE(wait([&] { return wrong.reconnects() >= 2; }));
  EXPECT_FALSE(wrong.connected());
  EXPECT_EQ(wrong.resyncs(), 0u);
  EXPECT_FALSE(wrong.write(add(e), &err));
}

TEST_F(StoreTest, HostNameIsResolved) {
  RedisServer& redis = this->redis();
  ASSERT_TRUE(redis.start());
  Seen& s = seen();
  Store& st = make("redis://localhost:" + std::to_string(redis.port()), &s);
  ASSERT_TRUE(wait([&] { return st.connected(); }));
  EXPECT_EQ(s.resyncs.size(), 1u);
}

TEST_F(StoreTest, SilentServerTimesOut) {
  // Accepts TCP connections (the kernel does) but never answers.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(::listen(fd, 16), 0);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  Seen& s = seen();
  Store& st = make("redis://127.0.0.1:" + std::to_string(ntohs(a.sin_port)), &s);
  ASSERT_TRUE(wait([&] { return st.reconnects() >= 1; }));
  EXPECT_FALSE(st.connected());
  EXPECT_TRUE(s.states.empty());
  ::close(fd);
}

// No Redis at all (a closed port): writes refused from the start, retries with backoff.
TEST(Store, NoServer) {
  TestLoop loop;
  Seen s;
  StoreOptions o;
  o.url = "redis://127.0.0.1:" + std::to_string(free_port()) + "/0";
  Store st(loop.get(), o, util::make_logger("store-test"), s.callbacks());
  std::string err;
  EXPECT_FALSE(st.write(add(entry("deny", "192.0.2.0/24")), &err));
  EXPECT_EQ(err.find("store " + o.url + " disconnected since "), 0u) << err;
  EXPECT_GT(st.disconnected_since_s(), 0);
  st.start();
  ASSERT_TRUE(run_until(loop.get(), [&] { return st.reconnects() >= 3; }));
  EXPECT_FALSE(st.connected());
  EXPECT_TRUE(s.order.empty());  // never up, so no on_state either
  bool done = false;
  st.stop([&] { done = true; });
  ASSERT_TRUE(run_until(loop.get(), [&] { return done; }));
  EXPECT_THROW(Store(loop.get(), StoreOptions{"rediss://h"}, nullptr, {}), std::invalid_argument);
}

TEST_F(StoreTest, StopAndDestroyWithWorkInFlight) {
  RedisServer& redis = this->redis();
  ASSERT_TRUE(redis.start());
  Seen& s1 = seen();
  Seen& s2 = seen();
  Seen& s3 = seen();
  {
    // Destroyed while connecting: no callback afterwards, every handle closed (TestLoop).
    StoreOptions o;
    o.url = redis.url();
    Store st(loop_.get(), o, util::make_logger("store-test"), s1.callbacks());
    st.start();
  }
  {
    // Destroyed while resolving its host name.
    StoreOptions o;
    o.url = "redis://localhost:" + std::to_string(redis.port());
    Store st(loop_.get(), o, util::make_logger("store-test"), s1.callbacks());
    st.start();
  }
  Store& a = make(redis.url(), &s2);
  ASSERT_TRUE(wait([&] { return a.connected(); }));
  std::string err;
  for (int i = 0; i < 100; ++i)
    ASSERT_TRUE(a.write(add(entry("deny", "10.0.0." + std::to_string(i))), &err)) << err;
  ASSERT_TRUE(a.write(clear("deny"), &err)) << err;
  ASSERT_TRUE(a.write(add(entry("deny", "10.0.1.0/24")), &err)) << err;
  // Stopped before any of them was answered: each counts as a failure.
  bool done = false;
  a.stop([&] { done = true; });
  stopped_.insert(&a);
  EXPECT_FALSE(done);  // from the loop, not inside stop()
  ASSERT_TRUE(wait([&] { return done; }));
  EXPECT_EQ(a.write_failures(), 102u);
  EXPECT_FALSE(a.connected());
  EXPECT_FALSE(a.write(add(entry("deny", "10.0.2.0/24")), &err));
  {
    // Destroyed with writes in flight, without stop().
    StoreOptions o;
    o.url = redis.url();
    auto st =
        std::make_unique<Store>(loop_.get(), o, util::make_logger("store-test"), s3.callbacks());
    st->start();
    ASSERT_TRUE(wait([&] { return st->connected(); }));
    ASSERT_TRUE(st->write(add(entry("deny", "10.0.3.0/24")), &err)) << err;
    st.reset();
  }
  EXPECT_TRUE(s1.order.empty());
}

}  // namespace
}  // namespace spoad::agents::ip_checker
