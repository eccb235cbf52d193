// Helpers shared by the files of the master (master*.cpp): its logger, and the text of exit
// statuses and of error messages in logs and CLI answers. (The wall clock: util/clock.h.)
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "util/log.h"

namespace spoad::supervisor {

// The master's logger ("spoad").
std::shared_ptr<spdlog::logger> mlog();

// A worker's exit as HAProxy's master logs it: "code 0 (Exit)", "code 137 (Killed)".
std::string exit_text(int64_t status, int signal);

// `text`'s non-empty lines (an error message from the file or a worker), each safe for a log
// line or a CLI answer: as it is when it is printable UTF-8, else escaped (util::printable).
std::vector<std::string> shown_lines(const std::string& text);

// `lines` joined by " / ", for one log line.
std::string joined(const std::vector<std::string>& lines);

}  // namespace spoad::supervisor
