// lib/metrics/arena: registration, its refusals, histograms, labels, and an arena shared with
// another process (fork), including one killed with SIGKILL.
#include "metrics/arena.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "metrics/exposition.h"
#include "util/escape.h"

using namespace spoad::metrics;

namespace {

std::vector<Sample> samples(const Arena& a) {
  std::vector<Sample> out;
  a.visit([&](const SeriesView& s) { out.push_back(to_sample(s)); });
  return out;
}

// The value of the series of `family` with `labels` and `role` (and `bound`), or -1.
double value_of(const Arena& a, std::string_view family, std::string_view labels,
                Role role = Role::kValue, uint64_t bound = 0) {
  double v = -1;
  a.visit([&](const SeriesView& s) {
    if (s.family == family && s.labels == labels && s.role == role &&
        (role != Role::kBucket || s.bound_us == bound))
      v = static_cast<double>(s.value);
  });
  return v;
}

size_t series_count(const Arena& a) {
  size_t n = 0;
  a.visit([&](const SeriesView&) { ++n; });
  return n;
}

}  // namespace

TEST(MetricsArena, SameFamilyAndLabelsTwiceGiveTheSameValue) {
  auto a = Arena::private_memory();
  Counter c1 = a->counter("spoad_x_total", "X.", {{"agent", "a"}}, {{"k", "v"}});
  Counter c2 = a->counter("spoad_x_total", "other help", {{"agent", "a"}}, {{"k", "v"}});
  Counter c3 = a->counter("spoad_x_total", "X.", {{"agent", "b"}}, {{"k", "v"}});
  ++c1;
  c2 += 4;
  c3++;
  EXPECT_EQ(c1.get(), 5u);
  EXPECT_EQ(c2.get(), 5u);
  EXPECT_EQ(c3.get(), 1u);
  EXPECT_EQ(series_count(*a), 2u);
  EXPECT_EQ(value_of(*a, "spoad_x_total", R"(agent="a",k="v")"), 5);
  EXPECT_EQ(value_of(*a, "spoad_x_total", R"(agent="b",k="v")"), 1);
  EXPECT_EQ(a->overflows(), 0u);
  // The first registration's help stays.
  a->visit([](const SeriesView& s) { EXPECT_EQ(s.help, "X."); });
}

TEST(MetricsArena, GaugesGoUpAndDownAndShowNegativeAsSigned) {
  auto a = Arena::private_memory();
  Gauge g = a->gauge("spoad_g", "G.", {});
  g += 3;
  --g;
  g--;
  EXPECT_EQ(g.get(), 1u);
  g = 7;
  EXPECT_EQ(static_cast<uint64_t>(g), 7u);
  g -= 8;
  auto s = samples(*a);
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].value, -1);
  EXPECT_EQ(s[0].type, Type::kGauge);
}

TEST(MetricsArena, TypeClashIsRefusedAndDiscarded) {
  auto a = Arena::private_memory();
  Counter c = a->counter("spoad_y", "Y.", {});
  Gauge g = a->gauge("spoad_y", "Y.", {});
  Histogram h = a->histogram("spoad_y", "Y.", {});
  EXPECT_EQ(a->overflows(), 2u);
  g = 42;
  h.observe_us(5);
  ++c;
  EXPECT_EQ(h.count(), 0u);
  ASSERT_EQ(series_count(*a), 1u);
  EXPECT_EQ(value_of(*a, "spoad_y", ""), 1);
}

TEST(MetricsArena, BadNamesAreRefused) {
  auto a = Arena::private_memory();
  for (std::string_view bad : {"", "1abc", "a-b", "a b", "a\nb", "caf\xc3\xa9", "x{y}"}) {
    Counter c = a->counter(bad, "bad", {});
    ++c;
  }
  EXPECT_EQ(a->overflows(), 7u);
  const std::string longest(Arena::kMaxName, 'a');
  a->counter(longest, "ok", {});
  EXPECT_EQ(a->overflows(), 7u);
  a->counter(longest + "a", "too long", {});
  EXPECT_EQ(a->overflows(), 8u);
  // Label names: identifiers, not reserved, not the histogram's own.
  a->counter("spoad_l", "", {{"a-b", "v"}});
  a->counter("spoad_l", "", {{"__name__", "v"}});
  a->counter("spoad_l", "", {}, {{"9", "v"}});
  a->histogram("spoad_h", "", {{"le", "1"}});
  a->counter("spoad_l", "", {{"agent", "a"}}, {{"agent", "b"}});  // twice
  EXPECT_EQ(a->overflows(), 13u);
  EXPECT_EQ(series_count(*a), 1u);  // the longest name only
  EXPECT_GT(discard_value()->get(), 0u);
}

TEST(MetricsArena, AFullArenaRefusesAndCounts) {
  auto a = Arena::private_memory();
  std::vector<Counter> cs;
  for (size_t i = 0; i < Arena::kMaxSeries; ++i)
    cs.push_back(a->counter("spoad_many_total", "", {{"i", std::to_string(i)}}));
  EXPECT_EQ(a->overflows(), 0u);
  Counter extra = a->counter("spoad_many_total", "", {{"i", "one more"}});
  Gauge other = a->gauge("spoad_other", "", {});
  Histogram h = a->histogram("spoad_h_seconds", "", {});
  EXPECT_EQ(a->overflows(), 3u);
  extra += 100;
  other = 5;
  h.observe_us(1);
  for (auto& c : cs)
    ++c;
  // Already registered: still the same value.
  Counter again = a->counter("spoad_many_total", "", {{"i", "17"}});
  ++again;
  EXPECT_EQ(a->overflows(), 3u);
  EXPECT_EQ(series_count(*a), Arena::kMaxSeries);
  EXPECT_EQ(value_of(*a, "spoad_many_total", R"(i="17")"), 2);
  EXPECT_EQ(value_of(*a, "spoad_many_total", R"(i="one more")"), -1);
}

TEST(MetricsArena, TooManyFamiliesAreRefused) {
  auto a = Arena::private_memory();
  for (size_t i = 0; i < Arena::kMaxFamilies; ++i)
    a->counter("spoad_f" + std::to_string(i), "", {});
  EXPECT_EQ(a->overflows(), 0u);
  a->counter("spoad_f_last", "", {});
  EXPECT_EQ(a->overflows(), 1u);
  EXPECT_EQ(series_count(*a), Arena::kMaxFamilies);
}

TEST(MetricsArena, AHistogramThatDoesNotFitIsRefusedWhole) {
  auto a = Arena::private_memory();
  // Leave room for 5 series: a histogram of 16 bounds needs 19.
  for (size_t i = 0; i + 5 < Arena::kMaxSeries; ++i)
    a->counter("spoad_fill_total", "", {{"i", std::to_string(i)}});
  Histogram h = a->histogram("spoad_lat_seconds", "", {});
  EXPECT_EQ(a->overflows(), 1u);
  EXPECT_EQ(series_count(*a), Arena::kMaxSeries - 5);
  h.observe_us(1);
  EXPECT_EQ(h.count(), 0u);
  static constexpr uint64_t kTwo[] = {10, 20};
  Histogram small = a->histogram("spoad_lat_seconds", "", {}, {}, kTwo);
  EXPECT_EQ(a->overflows(), 1u);
  EXPECT_EQ(series_count(*a), Arena::kMaxSeries);
  small.observe_us(15);
  EXPECT_EQ(small.count(), 1u);
}

TEST(MetricsArena, HistogramBucketsAreInclusiveAndSeparate) {
  auto a = Arena::private_memory();
  Histogram h = a->histogram("spoad_processing_seconds", "P.", {{"agent", "a"}});
  for (uint64_t us : {0, 10, 11, 1000000, 1000001, 5000000})
    h.observe_us(us);
  EXPECT_EQ(h.count(), 6u);
  EXPECT_EQ(h.sum_us(), 7000022u);
  const std::string l = R"(agent="a")";
  EXPECT_EQ(value_of(*a, "spoad_processing_seconds", l, Role::kBucket, 10), 2);  // 0, 10
  EXPECT_EQ(value_of(*a, "spoad_processing_seconds", l, Role::kBucket, 25), 1);  // 11
  EXPECT_EQ(value_of(*a, "spoad_processing_seconds", l, Role::kBucket, 50), 0);
  EXPECT_EQ(value_of(*a, "spoad_processing_seconds", l, Role::kBucket, 1000000), 1);
  EXPECT_EQ(value_of(*a, "spoad_processing_seconds", l, Role::kBucket, UINT64_MAX), 2);
  EXPECT_EQ(value_of(*a, "spoad_processing_seconds", l, Role::kCount), 6);
  EXPECT_EQ(value_of(*a, "spoad_processing_seconds", l, Role::kSum), 7000022);
  // 16 bounds + Inf + sum + count.
  EXPECT_EQ(series_count(*a), 19u);
  a->visit([](const SeriesView& s) {
    EXPECT_EQ(s.type, Type::kHistogram);
    EXPECT_EQ(s.unit, Unit::kMicroseconds);
  });
  // Registered again: the same values.
  Histogram h2 = a->histogram("spoad_processing_seconds", "P.", {{"agent", "a"}});
  h2.observe_us(1);
  EXPECT_EQ(h.count(), 7u);
  EXPECT_EQ(series_count(*a), 19u);
}

TEST(MetricsArena, HistogramBoundsStopAtTheFirstNotAscendingAndAtTheMaximum) {
  auto a = Arena::private_memory();
  static constexpr uint64_t kBad[] = {5, 50, 40, 500};
  Histogram h = a->histogram("spoad_a_seconds", "", {}, {}, kBad);
  h.observe_us(45);   // above 50? no: in the 50 bucket
  h.observe_us(400);  // +Inf: 40 and 500 were dropped
  EXPECT_EQ(value_of(*a, "spoad_a_seconds", "", Role::kBucket, 50), 1);
  EXPECT_EQ(value_of(*a, "spoad_a_seconds", "", Role::kBucket, UINT64_MAX), 1);
  EXPECT_EQ(value_of(*a, "spoad_a_seconds", "", Role::kBucket, 500), -1);
  static uint64_t many[40];
  for (size_t i = 0; i < 40; ++i)
    many[i] = i + 1;
  Histogram m = a->histogram("spoad_b_seconds", "", {}, {}, many);
  size_t buckets = 0;
  a->visit([&](const SeriesView& s) {
    if (s.family == "spoad_b_seconds" && s.role == Role::kBucket) ++buckets;
  });
  EXPECT_EQ(buckets, Histogram::kMaxBuckets + 1);
  m.observe_us(30);  // beyond the last bound kept (24): +Inf
  EXPECT_EQ(value_of(*a, "spoad_b_seconds", "", Role::kBucket, UINT64_MAX), 1);
  Histogram unregistered;
  unregistered.observe_us(3);
  EXPECT_EQ(unregistered.count(), 0u);
}

TEST(MetricsArena, HostileLabelValuesAreStoredEscapedAndCut) {
  auto a = Arena::private_memory();
  const std::string hostile("a\xff\n\"\\\r\0z", 8);
  a->counter("spoad_h_total", "", {{"agent", hostile}});
  std::string labels;
  a->visit([&](const SeriesView& s) { labels = std::string(s.labels); });
  EXPECT_EQ(labels, "agent=\"a\xEF\xBF\xBD\\n\\\"\\\\\xEF\xBF\xBD\xEF\xBF\xBDz\"");
  // A value longer than the room left is cut, never inside an escape or a character.
  for (char c : {'\\', '"', '\n', 'x'}) {
    for (std::string_view tail : {"", "\xc3\xa9", "\xe2\x82\xac"}) {
      std::string v;
      for (size_t i = 0; i < 300; ++i) {
        v += c;
        v += tail;
      }
      auto b = Arena::private_memory();
      b->counter("spoad_c_total", "", {{"agent", "a"}, {"v", v}}, {{"dropped", "x"}});
      std::string got;
      b->visit([&](const SeriesView& s) { got = std::string(s.labels); });
      ASSERT_FALSE(got.empty());
      EXPECT_LE(got.size(), Arena::kMaxLabels);
      EXPECT_GE(got.size(), Arena::kMaxLabels - 6);
      EXPECT_TRUE(spoad::util::is_utf8(got));
      EXPECT_EQ(got.back(), '"');
      EXPECT_EQ(got.find("dropped"), std::string::npos);
      EXPECT_EQ(got.find('\n'), std::string::npos);
      // Every backslash starts a whole escape.
      for (size_t i = 0; i < got.size(); ++i)
        if (got[i] == '\\') {
          ASSERT_LT(i + 1, got.size() - 1) << got;
          EXPECT_NE(std::string_view("\\\"n").find(got[i + 1]), std::string_view::npos);
          ++i;
        }
    }
  }
}

TEST(MetricsArena, ScopeAddsAgentAndTypeLabels) {
  auto arena = std::shared_ptr<Arena>(Arena::private_memory());
  Scope s(arena, "ip", "ip-checker");
  Counter c = s.counter("spoad_notify_total", "N.");
  Counter d = s.counter("spoad_disconnects_sent_total", "D.", {{"status", "normal"}});
  Histogram h = s.histogram("spoad_processing_seconds", "P.");
  ++c;
  ++d;
  h.observe_us(3);
  EXPECT_EQ(value_of(*arena, "spoad_notify_total", R"(agent="ip",type="ip-checker")"), 1);
  EXPECT_EQ(value_of(*arena, "spoad_disconnects_sent_total",
                     R"(agent="ip",type="ip-checker",status="normal")"),
            1);
  EXPECT_EQ(
      value_of(*arena, "spoad_processing_seconds", R"(agent="ip",type="ip-checker")", Role::kCount),
      1);
  Scope own;  // a private arena of its own
  Counter e = own.counter("spoad_notify_total", "N.");
  e += 2;
  EXPECT_EQ(e.get(), 2u);
  ASSERT_NE(own.arena(), nullptr);
  EXPECT_NE(own.arena(), arena.get());
  Scope copy = own;
  EXPECT_EQ(copy.arena(), own.arena());
  Counter unregistered;
  ++unregistered;  // writes to discard_value(), never crashes
}

TEST(MetricsArena, SharedArenaIsSealedAndAttachChecksIt) {
  std::string err;
  auto a = Arena::create_shared(&err);
  ASSERT_NE(a, nullptr) << err;
  ASSERT_GE(a->fd(), 0);
  EXPECT_EQ(ftruncate(a->fd(), 4096), -1);  // F_SEAL_SHRINK
  EXPECT_EQ(errno, EPERM);
  // Not an arena: the wrong size, or the right size with no magic.
  const int small = memfd_create("x", MFD_CLOEXEC);
  ASSERT_EQ(ftruncate(small, 4096), 0);
  EXPECT_EQ(Arena::attach(small, false, &err), nullptr);
  EXPECT_NE(err.find("size"), std::string::npos) << err;
  const int zero = memfd_create("x", MFD_CLOEXEC);
  ASSERT_EQ(ftruncate(zero, static_cast<off_t>(Arena::bytes())), 0);
  err.clear();
  EXPECT_EQ(Arena::attach(zero, true, &err), nullptr);
  EXPECT_NE(err.find("magic"), std::string::npos) << err;
  EXPECT_EQ(Arena::attach(-1, false, &err), nullptr);
  // A reader sees what the writer publishes, through its own mapping.
  Counter c = a->counter("spoad_z_total", "", {});
  auto r = Arena::attach(dup(a->fd()), false, &err);
  ASSERT_NE(r, nullptr) << err;
  c += 9;
  EXPECT_EQ(value_of(*r, "spoad_z_total", ""), 9);
  // A read-only arena cannot register (and does not fault).
  Counter ro = r->counter("spoad_ro_total", "", {});
  ++ro;
  EXPECT_EQ(series_count(*r), 1u);
  // A writer attaching to an arena that holds series finds them again.
  auto w = Arena::attach(dup(a->fd()), true, &err);
  ASSERT_NE(w, nullptr) << err;
  Counter same = w->counter("spoad_z_total", "", {});
  EXPECT_EQ(same.get(), 9u);
  EXPECT_EQ(series_count(*r), 1u);
}

// Labels as another process left them in the shared region: a control byte inside a value
// (which the writer's escaping never stores) makes the reader skip that series, so that no raw
// control byte reaches a line of the exposition.
TEST(MetricsArena, AReaderSkipsStoredLabelsWithAControlByte) {
  std::string err;
  auto a = Arena::create_shared(&err);
  ASSERT_NE(a, nullptr) << err;
  Counter ok = a->counter("spoad_ok_total", "", {{"a", "1"}});
  Counter bad = a->counter("spoad_bad_total", "", {{"b", "2"}});
  ok += 1;
  bad += 1;
  auto r = Arena::attach(dup(a->fd()), false, &err);
  ASSERT_NE(r, nullptr) << err;
  ASSERT_EQ(series_count(*r), 2u);
  void* p = mmap(nullptr, Arena::bytes(), PROT_READ | PROT_WRITE, MAP_SHARED, a->fd(), 0);
  ASSERT_NE(p, MAP_FAILED);
  auto* bytes = static_cast<char*>(p);
  char* stored = static_cast<char*>(memmem(bytes, Arena::bytes(), "b=\"2\"", 5));
  ASSERT_NE(stored, nullptr);
  for (char c : {'\x01', '\t', '\r', '\x1f', '\x7f'}) {
    stored[3] = c;
    EXPECT_EQ(series_count(*r), 1u) << static_cast<int>(c);
    EXPECT_EQ(value_of(*r, "spoad_ok_total", "a=\"1\""), 1);
    const std::string text = render(samples(*r), Format::kText004);
    for (char t : text)
      EXPECT_TRUE(t == '\n' || (static_cast<unsigned char>(t) >= 0x20 && t != 0x7f)) << text;
  }
  stored[3] = '2';
  EXPECT_EQ(series_count(*r), 2u);
  munmap(p, Arena::bytes());
}

TEST(MetricsArena, AnotherProcessWritesAndTheParentReads) {
  std::string err;
  auto a = Arena::create_shared(&err);
  ASSERT_NE(a, nullptr) << err;
  const int fd = dup(a->fd());  // inherited (dup clears close-on-exec; fork keeps it anyway)
  a.reset();                    // the parent keeps no writable mapping of its own
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::string e;
    auto w = Arena::attach(fd, true, &e);
    if (!w) _exit(2);
    Scope s(std::shared_ptr<Arena>(std::move(w)), "ip", "ip-checker");
    Counter c = s.counter("spoad_notify_total", "NOTIFYs.");
    Histogram h = s.histogram("spoad_processing_seconds", "P.");
    for (int i = 0; i < 1000; ++i) {
      ++c;
      h.observe_us(static_cast<uint64_t>(i));
    }
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
  auto r = Arena::attach(fd, false, &err);
  ASSERT_NE(r, nullptr) << err;
  const std::string l = R"(agent="ip",type="ip-checker")";
  EXPECT_EQ(value_of(*r, "spoad_notify_total", l), 1000);
  EXPECT_EQ(value_of(*r, "spoad_processing_seconds", l, Role::kCount), 1000);
  EXPECT_EQ(value_of(*r, "spoad_processing_seconds", l, Role::kSum), 999 * 1000 / 2);
  EXPECT_EQ(value_of(*r, "spoad_processing_seconds", l, Role::kBucket, 10), 11);
}

TEST(MetricsArena, AWriterKilledWithSigkillLeavesItsLastValues) {
  std::string err;
  auto reader = Arena::create_shared(&err);
  ASSERT_NE(reader, nullptr) << err;
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  const int fd = dup(reader->fd());
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(pipefd[0]);
    std::string e;
    auto w = Arena::attach(fd, true, &e);
    if (!w) _exit(2);
    Counter exact = w->counter("spoad_exact_total", "", {});
    Counter running = w->counter("spoad_running_total", "", {});
    for (int i = 0; i < 1000; ++i)
      ++exact;
    ++running;
    if (write(pipefd[1], "x", 1) != 1) _exit(3);
    for (;;)
      ++running;  // until killed
  }
  close(fd);
  close(pipefd[1]);
  char byte;
  ASSERT_EQ(read(pipefd[0], &byte, 1), 1);
  close(pipefd[0]);
  // Seen while the writer runs.
  EXPECT_EQ(value_of(*reader, "spoad_exact_total", ""), 1000);
  const double before = value_of(*reader, "spoad_running_total", "");
  EXPECT_GE(before, 1);
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  // After the kill: the last values, and they no longer move.
  EXPECT_EQ(value_of(*reader, "spoad_exact_total", ""), 1000);
  const double last = value_of(*reader, "spoad_running_total", "");
  EXPECT_GE(last, before);
  EXPECT_EQ(value_of(*reader, "spoad_running_total", ""), last);
}
