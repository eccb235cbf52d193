// Typed access to one YAML mapping of the spoad configuration, with errors that name the
// file, line and key. Every getter marks its key as read; check_unknown() then rejects the
// keys nobody read, so a typo never passes silently.
//
// Scalars may use environment variables as HAProxy's configuration does:
// "${NAME}" and "${NAME-default}" (the default replaces an unset variable, not an empty one).
//
// Layer: below lib/agent (an agent type's parse() takes an Options) and lib/config (the loader
// reads the file with it); it includes nothing from lib/. The names stay in spoad::config.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace spoad::config {

// A configuration error. what() reads "FILE:LINE: KEY: MESSAGE" (LINE is 1-based).
class ConfigError : public std::runtime_error {
 public:
  ConfigError(const std::string& file, int line, const std::string& key, const std::string& msg);
  const std::string& file() const { return file_; }
  int line() const { return line_; }
  const std::string& key() const { return key_; }
  const std::string& message() const { return msg_; }

 private:
  std::string file_;
  int line_;
  std::string key_;
  std::string msg_;
};

// Expands ${NAME} and ${NAME-default} in `in`. Throws std::invalid_argument on an unclosed
// "${".
std::string expand_env(std::string_view in);

class Options {
 public:
  // `node` must be a mapping (or null, read as empty). `path` is the key path of the mapping
  // ("agents[0]"), used in error messages.
  Options(YAML::Node node, std::shared_ptr<const std::string> file, std::string path);

  bool has(std::string_view key) const;

  // Getters: absent key -> `def` (or nullopt). Wrong type or out of range -> ConfigError.
  std::optional<std::string> str(std::string_view key);
  std::string str(std::string_view key, std::string_view def);
  int64_t integer(std::string_view key, int64_t def, int64_t min, int64_t max);
  bool boolean(std::string_view key, bool def);
  double number(std::string_view key, double def, double min, double max);
  // Durations: "250ms", "5s", "2m", "1h", "1d" or a bare integer of milliseconds.
  // Returned in milliseconds.
  uint64_t duration_ms(std::string_view key, uint64_t def, uint64_t min, uint64_t max);
  // Sizes: "512", "16k", "4m", "1g" (powers of 1024). Returned in bytes.
  uint64_t size(std::string_view key, uint64_t def, uint64_t min, uint64_t max);
  // A string or a sequence of strings.
  std::vector<std::string> str_list(std::string_view key);
  // A nested mapping.
  Options map(std::string_view key);
  // A sequence of mappings.
  std::vector<Options> map_list(std::string_view key);

  // Throws ConfigError for the first key that no getter read.
  void check_unknown() const;

  // Throws ConfigError at `key` (or at the mapping itself when key is empty).
  [[noreturn]] void fail(std::string_view key, const std::string& msg) const;

  int line(std::string_view key = {}) const;  // 1-based; the mapping's line if key is absent
  const std::string& file() const { return *file_; }
  const std::string& path() const { return path_; }
  std::string key_path(std::string_view key) const;

 private:
  YAML::Node get(std::string_view key);
  std::string scalar(std::string_view key, const YAML::Node& n) const;

  YAML::Node node_;
  std::shared_ptr<const std::string> file_;
  std::string path_;
  std::set<std::string, std::less<>> used_;
};

// Parses "250ms", "5s", ... into milliseconds; false if malformed.
bool parse_duration_ms(std::string_view s, uint64_t* ms);
// Parses "16k", "4m", ... into bytes; false if malformed.
bool parse_size(std::string_view s, uint64_t* bytes);

}  // namespace spoad::config
