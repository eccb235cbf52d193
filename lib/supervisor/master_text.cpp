#include "supervisor/master_text.h"

#include <cstring>
#include <sstream>

#include "util/escape.h"

namespace spoad::supervisor {

namespace {

// One line made safe: as it is when it is printable UTF-8, else escaped by util::printable.
std::string shown(std::string_view s) {
  bool plain = util::is_utf8(s);
  for (const char c : s)
    plain = plain && static_cast<unsigned char>(c) >= 0x20 && c != 0x7f;
  return plain ? std::string(s) : util::printable(s, 4096);
}

}  // namespace

std::shared_ptr<spdlog::logger> mlog() {
  return util::make_logger("spoad");
}

std::string exit_text(int64_t status, int signal) {
  if (signal) return "code " + std::to_string(128 + signal) + " (" + strsignal(signal) + ")";
  return "code " + std::to_string(status) + " (Exit)";
}

std::vector<std::string> shown_lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) out.push_back(shown(l));
  return out;
}

std::string joined(const std::vector<std::string>& lines) {
  std::string s;
  for (const std::string& l : lines)
    s += (s.empty() ? "" : " / ") + l;
  return s;
}

}  // namespace spoad::supervisor
