// ip-checker-bench: load time, memory and lookup time of the ip-checker's Matcher with a large
// deny list, against the targets (1,000,000 prefixes: load < 2 s, <= 64 MiB, lookup median
// < 200 ns) and same-run baselines.
//
//   ip-checker-bench [--prefixes N] [--lookups N] [--seed S] [--batch N] [--runtime N]
//
// It writes N random IPv4 prefixes (/8 to /32, deterministic for a seed) to a temporary file
// in the FireHOL .netset / Spamhaus DROP format, loads it as the agent does (load_list_file,
// then Matcher::build), and prints one "name value [target]" line per figure:
//   load_ms, parse_ms, build_ms   file parse + build, wall time
//   rss_mib                       RSS increase of the built matcher (parse data freed)
//   rss_agent_mib                 the same plus the parsed list the agent keeps for reloads
//   peak_mib                      peak RSS increase while loading (VmHWM)
//   lookup_median_ns, lookup_p99_ns
//                                 per-lookup time: lookups run in batches, the time of a
//                                 batch / batch size is one sample; median and p99 of samples
//   baseline_*                    the same measure for std::unordered_set<uint32_t>::count
//                                 (exact match) and a binary search in a sorted vector
// plus figures for the same prefixes spread over 8 deny lists of different scores (fewer
// ranges merge), for 200,000 IPv6 prefixes, and for runtime entries (--runtime N, default
// 100,000 random IPv4 /16-/32 and IPv6 entries in 4 lists, scores 50-100) in an overlay over
// the 1,000,000 prefixes: the lookup median with and without the overlay, same run, same
// addresses (rt_lookup_ratio), the overlay's build time and the memory of the set and tables.
#include <unistd.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <unordered_set>
#include <vector>

#include "agents/ip-checker/lists.h"
#include "agents/ip-checker/matcher.h"
#include "agents/ip-checker/runtime_entries.h"
#include "util/clock.h"

namespace ipc = spoad::agents::ip_checker;

namespace {

using Clock = std::chrono::steady_clock;
using spoad::util::ms_since;

void trim_heap() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

double rss_mib() {
  std::ifstream in("/proc/self/statm");
  long size = 0, resident = 0;
  in >> size >> resident;
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1 << 20);
}

// VmHWM (peak RSS) in MiB.
double hwm_mib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::strtod(line.c_str() + 6, nullptr) / 1024.0;
  }
  return 0;
}

// Resets VmHWM to the current RSS (Linux >= 4.0); false if not possible.
bool reset_hwm() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

// Random IPv4 prefixes with lengths weighted roughly like public block lists: many /24 and
// /32, some /16-/23, a few short ones.
class PrefixGen {
 public:
  explicit PrefixGen(uint64_t seed)
      : rng_(seed), len_({/*8*/ 1,      1,   2,   4,    8,    16,   40,    80,
                          /*16*/ 600,   500, 800, 1500, 6000, 6000, 12000, 8000,
                          /*24*/ 25000, 500, 600, 800,  1000, 1500, 1500,  500,
                          /*32*/ 26000}) {}

  ipc::PrefixSet::V4 next() {
    const unsigned len = 8 + static_cast<unsigned>(len_(rng_));
    const auto addr = static_cast<uint32_t>(rng_());
    const uint32_t mask = len == 0 ? 0 : ~uint32_t{0} << (32 - len);
    return {addr & mask, static_cast<uint8_t>(len)};
  }
  std::mt19937_64& rng() { return rng_; }

 private:
  std::mt19937_64 rng_;
  std::discrete_distribution<int> len_;
};

std::string v4_text(uint32_t a) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%u.%u.%u.%u", a >> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255);
  return buf;
}

// Writes `n` prefixes in a mix of FireHOL and Spamhaus DROP line styles.
void write_list(const std::string& path, size_t n, uint64_t seed) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) {
    std::perror(path.c_str());
    std::exit(1);
  }
  std::fprintf(f,
               "#\n# bench.netset\n# ipv4 hash:net ipset\n#\n"
               "; Spamhaus DROP List 2024/01/01 - (c) 2024 The Spamhaus Project\n"
               "; Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT\n\n");
  PrefixGen gen(seed);
  for (size_t i = 0; i < n; ++i) {
    const ipc::PrefixSet::V4 p = gen.next();
    const std::string a = v4_text(p.addr);
    switch (i % 4) {
      case 0:
        std::fprintf(f, "%s/%u ; SBL%06zu\n", a.c_str(), p.len, i % 1000000);
        break;
      case 1:
        std::fprintf(f, "%s/%u\n", a.c_str(), p.len);
        break;
      case 2:
        if (p.len == 32)
          std::fprintf(f, "%s\n", a.c_str());
        else
          std::fprintf(f, "%s/%u\n", a.c_str(), p.len);
        break;
      default:
        std::fprintf(f, "  %s/%u\t# trailing comment\n", a.c_str(), p.len);
        break;
    }
  }
  std::fclose(f);
}

struct Timing {
  double median = 0;
  double p99 = 0;
};

// Runs `one(x)` for every x in batches; returns per-lookup ns (median and p99 over batches).
template <typename F>
Timing time_lookups(const std::vector<uint32_t>& xs, size_t batch, F one, uint64_t* sink) {
  std::vector<double> samples;
  samples.reserve(xs.size() / batch + 1);
  uint64_t acc = 0;
  for (size_t i = 0; i < xs.size(); ++i)
    acc += one(xs[i]);  // warm-up
  for (size_t i = 0; i + batch <= xs.size(); i += batch) {
    const auto t0 = Clock::now();
    for (size_t j = i; j < i + batch; ++j)
      acc += one(xs[j]);
    const double ns = std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
    samples.push_back(ns / static_cast<double>(batch));
  }
  *sink += acc;
  std::sort(samples.begin(), samples.end());
  Timing t;
  if (samples.empty()) return t;
  t.median = samples[samples.size() / 2];
  t.p99 = samples[std::min(samples.size() - 1, samples.size() * 99 / 100)];
  return t;
}

void figure(const char* name, double v, const char* fmt, const char* target = nullptr,
            bool ok = true) {
  std::printf("%-28s ", name);
  std::printf(fmt, v);
  if (target) std::printf("    target %s: %s", target, ok ? "PASS" : "FAIL");
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  size_t n_prefixes = 1'000'000;
  size_t n_lookups = 1'000'000;
  size_t batch = 1000;
  size_t n_runtime = 100'000;
  uint64_t seed = 20240501;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const uint64_t v = std::strtoull(argv[i + 1], nullptr, 10);
    if (k == "--prefixes")
      n_prefixes = v;
    else if (k == "--lookups")
      n_lookups = v;
    else if (k == "--seed")
      seed = v;
    else if (k == "--batch")
      batch = std::max<uint64_t>(1, v);
    else if (k == "--runtime")
      n_runtime = v;
    else {
      std::fprintf(stderr,
                   "usage: %s [--prefixes N] [--lookups N] [--seed S] [--batch N] [--runtime N]\n",
                   argv[0]);
      return 2;
    }
  }

  const char* tmpdir = std::getenv("TMPDIR");
  std::string path = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/ip-checker-bench-XXXXXX";
  const int fd = mkstemp(path.data());
  if (fd < 0) {
    std::perror("mkstemp");
    return 1;
  }
  close(fd);
  write_list(path, n_prefixes, seed);
  std::printf("# %zu IPv4 deny prefixes (/8-/32, seed %llu) in %s, %zu lookups, batches of %zu\n",
              n_prefixes, static_cast<unsigned long long>(seed), path.c_str(), n_lookups, batch);

  // ---- load: parse the file and build, as the agent does ----
  trim_heap();
  const double rss0 = rss_mib();
  const bool hwm_ok = reset_hwm() && hwm_mib() - rss0 < 1.0;  // VmHWM now ~ RSS
  auto t0 = Clock::now();
  auto parsed = std::make_unique<ipc::ParsedList>();
  std::string err;
  if (!ipc::load_list_file(path, parsed.get(), &err, nullptr)) {
    std::fprintf(stderr, "load failed: %s\n", err.c_str());
    return 1;
  }
  const double parse_ms = ms_since(t0);
  ipc::ListInfo info{"bench", false, 100};
  t0 = Clock::now();
  const ipc::Matcher::Input in{&info, &parsed->prefixes};
  auto matcher = std::make_unique<ipc::Matcher>(ipc::Matcher::build({&in, 1}));
  const double build_ms = ms_since(t0);
  trim_heap();
  const double peak = hwm_mib() - rss0;
  const double rss_agent = rss_mib() - rss0;
  const size_t entries = parsed->prefixes.size();
  parsed.reset();
  trim_heap();
  const double rss_matcher = rss_mib() - rss0;
  unlink(path.c_str());

  // ---- lookups: half uniform random, half inside generated prefixes ----
  std::vector<uint32_t> xs;
  xs.reserve(n_lookups);
  {
    PrefixGen gen(seed);  // same prefixes as the file
    std::mt19937_64 rng(seed + 1);
    for (size_t i = 0; i < n_lookups; ++i) {
      if (i % 2 == 0) {
        xs.push_back(static_cast<uint32_t>(rng()));
      } else {
        const ipc::PrefixSet::V4 p = gen.next();
        const uint32_t host = p.len >= 32 ? 0 : static_cast<uint32_t>(rng()) >> p.len;
        xs.push_back(p.addr | host);
      }
    }
    std::shuffle(xs.begin(), xs.end(), rng);
  }
  uint64_t sink = 0;
  size_t hits = 0;
  for (uint32_t x : xs)
    hits += matcher->lookup(ipc::Address::V4(x)).denied ? 1 : 0;
  const Timing tm = time_lookups(
      xs, batch, [&](uint32_t x) { return matcher->lookup(ipc::Address::V4(x)).score; }, &sink);

  // ---- baselines over the same prefixes' network addresses ----
  Timing tb_hash, tb_sorted;
  {
    std::vector<uint32_t> starts;
    starts.reserve(n_prefixes);
    PrefixGen gen(seed);
    for (size_t i = 0; i < n_prefixes; ++i)
      starts.push_back(gen.next().addr);
    std::unordered_set<uint32_t> set(starts.begin(), starts.end());
    tb_hash = time_lookups(
        xs, batch, [&](uint32_t x) { return set.count(x); }, &sink);
    std::sort(starts.begin(), starts.end());
    starts.erase(std::unique(starts.begin(), starts.end()), starts.end());
    tb_sorted = time_lookups(
        xs, batch,
        [&](uint32_t x) {
          return static_cast<size_t>(std::upper_bound(starts.begin(), starts.end(), x) -
                                     starts.begin());
        },
        &sink);
  }

  std::printf("# one deny list (score 100), %zu entries\n", entries);
  figure("load_ms", parse_ms + build_ms, "%.0f", "< 2000", parse_ms + build_ms < 2000);
  figure("parse_ms", parse_ms, "%.0f");
  figure("build_ms", build_ms, "%.0f");
  figure("rss_mib", rss_matcher, "%.1f", "<= 64", rss_matcher <= 64);
  figure("rss_agent_mib", rss_agent, "%.1f", "<= 64", rss_agent <= 64);
  if (hwm_ok) figure("peak_mib", peak, "%.1f");
  figure("table_mib", static_cast<double>(matcher->memory_bytes()) / (1 << 20), "%.1f");
  figure("ranges_v4", static_cast<double>(matcher->ranges_v4()), "%.0f");
  figure("hit_ratio", static_cast<double>(hits) / static_cast<double>(xs.size()), "%.3f");
  figure("lookup_median_ns", tm.median, "%.1f", "< 200", tm.median < 200);
  figure("lookup_p99_ns", tm.p99, "%.1f");
  figure("baseline_hashset_median_ns", tb_hash.median, "%.1f");
  figure("baseline_sorted_median_ns", tb_sorted.median, "%.1f");
  figure("ratio_vs_hashset", tm.median / tb_hash.median, "%.2f");
  figure("ratio_vs_sorted", tm.median / tb_sorted.median, "%.2f");

  // ---- runtime entries: the overlay over the same matcher, same addresses ----
  if (n_runtime > 0) {
    const std::vector<ipc::ListInfo> lists = {
        {"bench", false, 100}, {"rt-a", false, 50}, {"rt-b", false, 80}, {"rt-allow", true, 0}};
    trim_heap();
    const double rss_before = rss_mib();
    ipc::RuntimeEntries rt(lists, n_runtime);
    std::mt19937_64 rng(seed + 3);
    PrefixGen gen(seed + 4);
    for (size_t i = 0; rt.size() < n_runtime && i < 4 * n_runtime; ++i) {
      ipc::Change c;
      const auto& l = lists[i % 4 == 3 && i % 64 != 3 ? 1 : i % 4];  // 1 allow entry in 64
      c.entry.list = l.name;
      c.entry.allow = l.allow;
      c.entry.score = l.allow ? 0 : static_cast<uint8_t>(50 + rng() % 51);
      c.entry.expires_s = (i % 2) ? 2'000'000'000 + static_cast<int64_t>(rng() % 3600) : 0;
      if (i % 10 == 9) {
        const unsigned len = 48 + static_cast<unsigned>(rng() % 81);
        ipc::U128 a = (ipc::U128{rng()} << 64) | rng();
        a = (a & ~(ipc::U128{7} << 125)) | (ipc::U128{1} << 125);
        c.entry.prefix = {ipc::Address::V6(a & ~ipc::host_mask(len, 128)),
                          static_cast<uint8_t>(len)};
      } else {
        ipc::PrefixSet::V4 p = gen.next();
        if (p.len < 16) p = {p.addr & 0xffff0000u, 16};
        c.entry.prefix = {ipc::Address::V4(p.addr), p.len};
      }
      rt.apply(c, 1'000'000'000);
    }
    trim_heap();
    const double rss_set = rss_mib() - rss_before;
    t0 = Clock::now();
    std::shared_ptr<const ipc::Overlay> ov = rt.build_overlay();
    const double ov_ms = ms_since(t0);
    size_t rt_hits = 0;
    for (uint32_t x : xs) {
      bool from_rt = false;
      ov->lookup(matcher->lookup(ipc::Address::V4(x)), ipc::Address::V4(x), &from_rt);
      rt_hits += from_rt ? 1 : 0;
    }
    // Alternate the two measures so that both see the same machine state.
    Timing base, with;
    std::vector<double> base_med, with_med;
    for (int round = 0; round < 3; ++round) {
      base = time_lookups(
          xs, batch, [&](uint32_t x) { return matcher->lookup(ipc::Address::V4(x)).score; }, &sink);
      with = time_lookups(
          xs, batch,
          [&](uint32_t x) {
            const ipc::Address a = ipc::Address::V4(x);
            return ov->lookup(matcher->lookup(a), a).score;
          },
          &sink);
      base_med.push_back(base.median);
      with_med.push_back(with.median);
    }
    std::sort(base_med.begin(), base_med.end());
    std::sort(with_med.begin(), with_med.end());
    std::printf(
        "# %zu runtime entries (4 lists, 10%% IPv6, half with an expiry) in an overlay "
        "over the %zu prefixes; medians of 3 alternating runs\n",
        rt.size(), entries);
    figure("rt_entries", static_cast<double>(rt.size()), "%.0f");
    figure("rt_set_mib", rss_set, "%.1f");
    figure("rt_overlay_build_ms", ov_ms, "%.1f");
    figure("rt_overlay_mib", static_cast<double>(ov->memory_bytes()) / (1 << 20), "%.1f");
    figure("rt_overlay_ranges_v4", static_cast<double>(ov->matcher.ranges_v4()), "%.0f");
    figure("rt_decided_ratio", static_cast<double>(rt_hits) / static_cast<double>(xs.size()),
           "%.3f");
    figure("rt_lookup_without_median_ns", base_med[1], "%.1f");
    figure("rt_lookup_with_median_ns", with_med[1], "%.1f");
    figure("rt_lookup_with_p99_ns", with.p99, "%.1f");
    figure("rt_lookup_ratio", with_med[1] / base_med[1], "%.2f");
    t0 = Clock::now();
    const std::string state = rt.encode();
    const double enc_ms = ms_since(t0);
    t0 = Clock::now();
    const size_t decoded = ipc::RuntimeEntries::decode(state).size();
    const double dec_ms = ms_since(t0);
    figure("rt_pool_state_mib", static_cast<double>(state.size()) / (1 << 20), "%.2f");
    figure("rt_pool_state_encode_ms", enc_ms, "%.1f");
    figure("rt_pool_state_decode_ms", dec_ms, "%.1f");
    if (decoded != rt.size()) std::printf("# pool state round trip FAILED\n");
  }
  matcher.reset();
  trim_heap();

  // ---- the same prefixes in 8 deny lists with different scores (less merging) ----
  {
    std::vector<ipc::PrefixSet> sets(8);
    std::vector<ipc::ListInfo> infos;
    PrefixGen gen(seed);
    for (size_t i = 0; i < n_prefixes; ++i)
      sets[i % 8].v4.push_back(gen.next());
    std::vector<ipc::Matcher::Input> inputs;
    for (size_t i = 0; i < 8; ++i)
      infos.push_back({"list" + std::to_string(i), false, static_cast<uint8_t>(10 * (i + 1))});
    for (size_t i = 0; i < 8; ++i)
      inputs.push_back({&infos[i], &sets[i]});
    t0 = Clock::now();
    ipc::Matcher m = ipc::Matcher::build(inputs);
    const double ms = ms_since(t0);
    const Timing t = time_lookups(
        xs, batch, [&](uint32_t x) { return m.lookup(ipc::Address::V4(x)).score; }, &sink);
    std::printf("# the same prefixes in 8 deny lists with scores 10-80\n");
    figure("multi_build_ms", ms, "%.0f");
    figure("multi_table_mib", static_cast<double>(m.memory_bytes()) / (1 << 20), "%.1f");
    figure("multi_ranges_v4", static_cast<double>(m.ranges_v4()), "%.0f");
    figure("multi_lookup_median_ns", t.median, "%.1f");
    figure("multi_lookup_p99_ns", t.p99, "%.1f");
  }

  // ---- IPv6: 200,000 prefixes /16-/64 in 2000::/3 ----
  {
    const size_t n6 = std::min<size_t>(200'000, n_prefixes);
    std::mt19937_64 rng(seed + 2);
    ipc::PrefixSet set;
    for (size_t i = 0; i < n6; ++i) {
      const unsigned len = 16 + static_cast<unsigned>(rng() % 49);
      ipc::U128 a = (ipc::U128{rng()} << 64) | rng();
      a = (a & ~(ipc::U128{7} << 125)) | (ipc::U128{1} << 125);  // 2000::/3
      a &= ~ipc::host_mask(len, 128);
      set.v6.push_back({a, static_cast<uint8_t>(len)});
    }
    ipc::ListInfo info6{"v6", false, 100};
    const ipc::Matcher::Input in6{&info6, &set};
    t0 = Clock::now();
    ipc::Matcher m = ipc::Matcher::build({&in6, 1});
    const double ms = ms_since(t0);
    std::vector<ipc::U128> ys;
    for (size_t i = 0; i < std::min<size_t>(n_lookups, 1'000'000); ++i) {
      if (i % 2 == 0) {
        ys.push_back((ipc::U128{rng()} << 64) | rng());
      } else {
        const auto& p = set.v6[rng() % set.v6.size()];
        ys.push_back(p.addr | (((ipc::U128{rng()} << 64) | rng()) & ipc::host_mask(p.len, 128)));
      }
    }
    std::vector<uint32_t> idx(ys.size());
    for (size_t i = 0; i < idx.size(); ++i)
      idx[i] = static_cast<uint32_t>(i);
    const Timing t = time_lookups(
        idx, batch, [&](uint32_t i) { return m.lookup(ipc::Address::V6(ys[i])).score; }, &sink);
    std::printf("# %zu IPv6 deny prefixes /16-/64\n", n6);
    figure("v6_build_ms", ms, "%.0f");
    figure("v6_table_mib", static_cast<double>(m.memory_bytes()) / (1 << 20), "%.1f");
    figure("v6_ranges", static_cast<double>(m.ranges_v6()), "%.0f");
    figure("v6_lookup_median_ns", t.median, "%.1f");
    figure("v6_lookup_p99_ns", t.p99, "%.1f");
  }
  std::printf("# (checksum %llu)\n", static_cast<unsigned long long>(sink));
  return 0;
}
