// Fuzz target: a master CLI line on its way to a worker (lib/cli/command.h, then the channel's
// CliRequest, lib/supervisor/messages.h). The input is one CLI line, any bytes. Properties:
//   - each command the master parses reaches the worker with exactly the same words: the
//     CliRequest carries the words, so nothing is joined or split again on the way (input
//     bytes 5c 0d, "\\\r", once changed a routed command);
//   - the routing word is read the same way on both sides of the trip; an "@<agent name>"
//     word names an agent the configuration accepts, never a process;
//   - the master's answers to what it does not know are built for any words.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "cli/command.h"
#include "cli/master_cli.h"
#include "fuzz_check.h"
#include "supervisor/messages.h"

using namespace spoad;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view line(reinterpret_cast<const char*>(data), size);
  uint64_t id = 0;
  std::string wire;
  std::vector<cli::Words> sent;
  for (cli::Words words : cli::split_commands(line)) {
    const cli::Route r = words.empty() ? cli::Route{} : cli::parse_route(words[0]);
    if (r.kind == cli::Route::Kind::kAgent) {
      // "@<agent name>": a name the configuration accepts, never one read as a process.
      FUZZ_CHECK(!r.name.empty() && r.name.size() <= 64 && r.name != "master");
      FUZZ_CHECK(r.name.find_first_not_of("0123456789") != std::string::npos);
      FUZZ_CHECK(words[0] == "@" + r.name);
    }
    if (r.kind != cli::Route::Kind::kNone)
      words.erase(words.begin());  // as the master does before routing
    FUZZ_CHECK(supervisor::msg::encode(supervisor::msg::CliRequest{++id, words}, wire));
    sent.push_back(words);
    bool known = false;
    for (const cli::CommandInfo& c : cli::MasterCli::commands())
      known = known || cli::matches(c, words);
    if (!known)
      FUZZ_CHECK(cli::unknown_command_message(cli::MasterCli::commands(), words)
                     .starts_with("Unknown command"));
  }
  // The worker's side: the frames in order, each with the words the master had.
  std::string_view in = wire;
  for (size_t i = 0; i < sent.size(); ++i) {
    const supervisor::msg::Decoded d = supervisor::msg::decode(in);
    FUZZ_CHECK(d.status == supervisor::msg::Decoded::Status::kMessage);
    const auto* req = std::get_if<supervisor::msg::CliRequest>(&d.message);
    FUZZ_CHECK(req != nullptr);
    FUZZ_CHECK(req->id == i + 1);
    FUZZ_CHECK(req->words == sent[i]);
    in.remove_prefix(d.used);
  }
  FUZZ_CHECK(in.empty());
  return 0;
}
