// Fuzz target: the CLI grammar (lib/cli/command.h; HAProxy management.txt 9.3, 9.4). The input
// is one CLI line. Properties:
//   - split_commands: one command per unescaped ';', no empty word, no word holding an
//     unescaped separator; escaping every special character of the words and joining them
//     again gives a line that splits into the same words (the master forwards a routed command
//     to a worker this way, so a command cannot change on the way);
//   - parse_route: kNone exactly for words not starting with '@', a number for the others;
//   - help and unknown-command answers for every command typed, against a fixed table.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "cli/command.h"
#include "fuzz_check.h"

using namespace spoad::cli;

namespace {

// A backslash before every character split_commands() treats specially.
std::string escape_word(const std::string& w) {
  std::string out;
  for (char c : w) {
    if (c == '\\' || c == ';' || c == ' ' || c == '\t' || c == '\r' || c == '\n') out += '\\';
    out += c;
  }
  return out;
}

const std::vector<CommandInfo>& table() {
  static const std::vector<CommandInfo> t = {
      {{"show", "proc"}, usage_line("show proc", "show processes")},
      {{"show", "info"}, usage_line("show info", "report information")},
      {{"show", "stat"}, usage_line("show stat [json]", "counters")},
      {{"show", "ip"}, usage_line("show ip <addr>", "look an address up")},
      {{"reload"}, usage_line("reload", "reload the configuration")},
      {{"@<relative pid>"}, usage_line("@<relative pid>", "send a command to a worker")},
      {{"@!<pid>"}, usage_line("@!<pid>", "send a command to a process")},
  };
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view line(reinterpret_cast<const char*>(data), size);
  const std::vector<Words> cmds = split_commands(line);

  size_t separators = 0;
  for (size_t i = 0; i < line.size(); ++i) {
    if (line[i] == '\\' && i + 1 < line.size())
      ++i;
    else if (line[i] == ';')
      ++separators;
  }
  FUZZ_CHECK(cmds.size() == separators + 1);

  std::string joined;
  for (size_t c = 0; c < cmds.size(); ++c) {
    if (c) joined += ';';
    for (size_t w = 0; w < cmds[c].size(); ++w) {
      FUZZ_CHECK(!cmds[c][w].empty());
      if (w) joined += ' ';
      joined += escape_word(cmds[c][w]);
    }
  }
  FUZZ_CHECK(split_commands(joined) == cmds);

  // The answers are computed for the first commands only: they cost a pass over the table
  // each, and a line of ';' would otherwise make every run slow.
  for (size_t c = 0; c < cmds.size() && c < 8; ++c) {
    const Words& words = cmds[c];
    if (!words.empty()) {
      const Route r = parse_route(words[0]);
      FUZZ_CHECK((r.kind == Route::Kind::kNone) == (words[0][0] != '@'));
      if (r.kind == Route::Kind::kRelative || r.kind == Route::Kind::kPid) FUZZ_CHECK(r.number > 0);
    }
    bool known = false;
    for (const CommandInfo& c : table())
      known = known || matches(c, words);
    if (!known) {
      const std::string msg = unknown_command_message(table(), words);
      FUZZ_CHECK(msg.starts_with("Unknown command"));
    }
  }
  FUZZ_CHECK(!help_message(table()).empty());
  return 0;
}
