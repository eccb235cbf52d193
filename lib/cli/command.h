// Command-line grammar of the master and worker CLIs, as HAProxy's CLI reads it
// (management.txt 9.3 and 9.4): a line holds commands separated by ';', a backslash escapes
// the next character, words are separated by spaces or tabs. No I/O.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace spoad::cli {

using Words = std::vector<std::string>;

// Splits one input line (without its '\n') into commands, each split into words. Empty
// commands (";;", trailing ';') are kept as empty word lists, which the CLI ignores.
std::vector<Words> split_commands(std::string_view line);

// The routing prefix of a master CLI command (management.txt 9.4): the first word "@...".
// spoad adds "@<agent name>": every live worker of that agent's pool.
struct Route {
  enum class Kind {
    kNone,      // not a routing word
    kMaster,    // "@", "@0", "@master"
    kRelative,  // "@<relative pid>"
    kPid,       // "@!<pid>"
    kAgent,     // "@<agent name>": 1-64 of A-Z a-z 0-9 _ - . and not all digits
    kInvalid,   // "@!x", "@!0", "@a/b", a relative pid beyond 64 bits: names nothing
  };
  Kind kind = Kind::kNone;
  uint64_t number = 0;  // the relative pid or the pid
  std::string name;     // kAgent: the agent name
};

// Reads a routing word. Returns kNone for words that do not start with '@'. Whether a kAgent
// or a kRelative names something that runs is for the master to say.
Route parse_route(std::string_view word);

// One command of a CLI level, for `help` and for suggestions after an unknown command.
struct CommandInfo {
  Words words;        // the words that select it: {"show", "proc"}, {"@<relative pid>"}
  std::string usage;  // the help line: the command padded to 40 columns, ": ", a description
};

// "<name padded to 40 columns>: <description>", HAProxy's usage layout.
std::string usage_line(std::string_view name, std::string_view description);

// The answer to `help`: "The following commands are valid at this level:", the usage lines
// sorted, then the help/prompt/quit lines every level has.
std::string help_message(const std::vector<CommandInfo>& commands);

// The answer to an unknown command, as HAProxy 2.6 builds it: for an empty command, "Unknown
// command. Please enter one of the following commands only:" and every command; otherwise
// "Unknown command, but maybe one of the following ones is a better match:" and the commands
// whose words are closest to what was typed (character-pair fingerprints, at most 5), or every
// command when none is close; then the help/prompt/quit lines.
std::string unknown_command_message(const std::vector<CommandInfo>& commands, const Words& typed);

// True if `typed` starts with all the words of `c` (the rest are arguments).
bool matches(const CommandInfo& c, const Words& typed);

}  // namespace spoad::cli
