// The ip-checker's options (the agent's YAML map; keys in agents/ip-checker/README.md) and its
// registration as agent type "ip-checker".
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>

#include "agents/ip-checker/ip_checker.h"
#include "util/escape.h"
#include "util/text.h"

namespace spoad::agents::ip_checker {

namespace {

constexpr size_t kMaxLists = 65534;  // Matcher::build's limit
// max-runtime-entries at most: the pool state (31 bytes per entry without comments) must fit
// in one channel message (64 MiB, supervisor/messages.h).
constexpr int64_t kMaxRuntime = 2'000'000;

// A relative list path is relative to the directory of the configuration file.
std::string resolve_path(const std::string& config_file, const std::string& file) {
  std::filesystem::path p(file);
  if (p.is_absolute()) return file;
  const std::filesystem::path base = std::filesystem::path(config_file).parent_path();
  if (base.empty()) return file;
  return (base / p).lexically_normal().string();
}

ListConfig parse_list(config::Options& item, bool allow, std::set<std::string>* names) {
  ListConfig lc;
  auto name = item.str("name");
  if (!name) item.fail("", "missing key \"name\"");
  if (!valid_list_name(*name)) item.fail("name", "use 1-64 characters among A-Z a-z 0-9 _ - .");
  if (!names->insert(*name).second) item.fail("name", "duplicate list name \"" + *name + "\"");
  lc.info.name = *name;
  lc.info.allow = allow;
  if (!allow) {
    if (!item.has("score")) item.fail("", "missing key \"score\" (0-100)");
    lc.info.score = static_cast<uint8_t>(item.integer("score", 0, 0, 100));
  }
  const bool has_file = item.has("file");
  const bool has_entries = item.has("entries");
  if (has_file && has_entries) item.fail("", "use either \"file\" or \"entries\", not both");
  // Neither: a list for runtime entries only (inline_entries stays null).
  if (has_file) {
    const std::string f = item.str("file", "");
    if (f.empty()) item.fail("file", "empty path");
    lc.file = resolve_path(item.file(), f);
    struct stat st;
    if (::stat(lc.file.c_str(), &st) != 0 || ::access(lc.file.c_str(), R_OK) != 0)
      item.fail("file",
                "cannot read \"" + util::printable(lc.file, 4096) + "\": " + std::strerror(errno));
    if (S_ISDIR(st.st_mode))
      item.fail("file", "\"" + util::printable(lc.file, 4096) + "\" is a directory");
  } else if (has_entries) {
    auto pl = std::make_shared<ParsedList>();
    const std::vector<std::string> entries = item.str_list("entries");
    for (size_t i = 0; i < entries.size(); ++i) {
      const char* why = "";
      if (!add_entry(util::trim(entries[i], util::kWhitespace), pl.get(), &why))
        item.fail("entries", "entry " + std::to_string(i + 1) + " \"" +
                                 util::printable(entries[i], 64) + "\": " + why);
    }
    lc.inline_entries = std::move(pl);
  }
  item.check_unknown();
  return lc;
}

std::unique_ptr<agent::AgentOptions> parse(config::Options& o) {
  auto opts = std::make_unique<IpCheckerOptions>();
  opts->message = o.str("message", opts->message);
  if (opts->message.empty()) o.fail("message", "must not be empty");
  opts->argument = o.str("argument", opts->argument);
  opts->block_threshold =
      static_cast<int>(o.integer("block-threshold", opts->block_threshold, 0, 100));
  opts->watch = o.boolean("watch", opts->watch);
  opts->watch_delay_ms = o.duration_ms("watch-delay", opts->watch_delay_ms, 0, 60'000);
  std::set<std::string> names;
  for (config::Options& item : o.map_list("allow"))
    opts->lists.push_back(parse_list(item, true, &names));
  for (config::Options& item : o.map_list("deny"))
    opts->lists.push_back(parse_list(item, false, &names));
  if (opts->lists.size() > kMaxLists)
    o.fail("deny", "too many lists (at most " + std::to_string(kMaxLists) + ")");
  opts->max_runtime_entries = static_cast<size_t>(o.integer(
      "max-runtime-entries", static_cast<int64_t>(opts->max_runtime_entries), 0, kMaxRuntime));
  opts->store = parse_store_options(o);
  return opts;
}

std::unique_ptr<agent::Agent> create(const agent::Context& ctx, const agent::AgentOptions& o) {
  return std::make_unique<IpCheckerAgent>(ctx, static_cast<const IpCheckerOptions&>(o));
}

}  // namespace

SPOAD_REGISTER_AGENT(ip_checker, "ip-checker",
                     "allow/deny and a reputation score for a client address, from IP lists", parse,
                     create);

}  // namespace spoad::agents::ip_checker
