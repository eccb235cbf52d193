#include "cli/command.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <climits>
#include <cstdlib>

namespace spoad::cli {

namespace {

const char kTrailer[] =
    "  help [<command>]                        : list matching or all commands\n"
    "  prompt                                  : toggle interactive mode with prompt\n"
    "  quit                                    : disconnect\n";

// Character-pair fingerprint of some words: how often each transition between character
// classes occurs (a-z = 1..26, digit = 27, other = 28, with 28 also marking the start and the
// end of each word), plus which classes occur at all. Two fingerprints are compared by the sum
// of their differences: typos and swapped letters stay close.
using Fingerprint = std::array<uint8_t, 32 * 32>;

int char_class(char c) {
  if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  if (c >= 'a' && c <= 'z') return c - 'a' + 1;
  if (c >= '0' && c <= '9') return 27;
  return 28;
}

void add_word(Fingerprint& fp, std::string_view w) {
  int from = 28;
  for (char ch : w) {
    const int to = char_class(ch);
    fp[to] = 1;
    ++fp[32 * from + to];
    from = to;
  }
  ++fp[32 * from + 28];
}

int distance(const Fingerprint& a, const Fingerprint& b) {
  int d = 0;
  for (size_t i = 0; i < a.size(); ++i)
    d += std::abs(int{a[i]} - int{b[i]});
  return d;
}

std::string listing(std::vector<const CommandInfo*> entries) {
  std::sort(entries.begin(), entries.end(),
            [](const CommandInfo* a, const CommandInfo* b) { return a->usage < b->usage; });
  std::string out;
  for (const CommandInfo* c : entries)
    out += "  " + c->usage + "\n";
  return out + kTrailer;
}

}  // namespace

std::vector<Words> split_commands(std::string_view line) {
  std::vector<Words> cmds(1);
  std::string word;
  bool in_word = false;
  auto end_word = [&] {
    if (in_word) cmds.back().push_back(std::move(word));
    word.clear();
    in_word = false;
  };
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (c == '\\' && i + 1 < line.size()) {
      word += line[++i];
      in_word = true;
    } else if (c == ';') {
      end_word();
      cmds.emplace_back();
    } else if (c == ' ' || c == '\t' || c == '\r') {
      end_word();
    } else {
      word += c;
      in_word = true;
    }
  }
  end_word();
  return cmds;
}

Route parse_route(std::string_view w) {
  Route r;
  if (w.empty() || w[0] != '@') return r;
  if (w == "@" || w == "@master" || w == "@0") {
    r.kind = Route::Kind::kMaster;
    return r;
  }
  std::string_view num = w.substr(1);
  r.kind = Route::Kind::kRelative;
  if (num[0] == '!') {
    r.kind = Route::Kind::kPid;
    num.remove_prefix(1);
  } else if (num.find_first_not_of("0123456789") != std::string_view::npos) {
    // Not all digits: an agent name, as the configuration allows them (config/config.cpp).
    const bool valid = num.size() <= 64 && num.find_first_not_of(
                                               "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuv"
                                               "wxyz0123456789_-.") == std::string_view::npos;
    r.kind = valid ? Route::Kind::kAgent : Route::Kind::kInvalid;
    if (valid) r.name = std::string(num);
    return r;
  }
  auto [p, ec] = std::from_chars(num.data(), num.data() + num.size(), r.number);
  if (num.empty() || ec != std::errc() || p != num.data() + num.size() || r.number == 0)
    r.kind = Route::Kind::kInvalid;
  return r;
}

std::string usage_line(std::string_view name, std::string_view description) {
  std::string s(name);
  if (s.size() < 40) s.append(40 - s.size(), ' ');
  return s + ": " + std::string(description);
}

std::string help_message(const std::vector<CommandInfo>& commands) {
  std::vector<const CommandInfo*> all;
  for (const CommandInfo& c : commands)
    all.push_back(&c);
  return "The following commands are valid at this level:\n" + listing(all);
}

bool matches(const CommandInfo& c, const Words& typed) {
  if (typed.size() < c.words.size()) return false;
  for (size_t i = 0; i < c.words.size(); ++i)
    if (c.words[i] != typed[i]) return false;
  return true;
}

std::string unknown_command_message(const std::vector<CommandInfo>& commands, const Words& typed) {
  std::vector<const CommandInfo*> all;
  for (const CommandInfo& c : commands)
    all.push_back(&c);
  if (typed.empty())
    return "Unknown command. Please enter one of the following commands only:\n" + listing(all);

  // How many leading words match some command exactly.
  size_t exact = 0;
  for (const CommandInfo& c : commands) {
    size_t n = 0;
    while (n < c.words.size() && n < typed.size() && c.words[n] == typed[n])
      ++n;
    exact = std::max(exact, n);
  }
  // Among the commands that share those words, the closest by fingerprint of the rest.
  struct Match {
    const CommandInfo* c;
    int dist;
  };
  std::vector<Match> best;
  constexpr size_t kMaxMatches = 5;
  if (exact < typed.size()) {
    for (const CommandInfo& c : commands) {
      size_t n = 0;
      while (n < exact && n < c.words.size() && c.words[n] == typed[n])
        ++n;
      if (n != exact) continue;
      Fingerprint a{}, b{};
      size_t total = 0;
      for (size_t i = exact; i < typed.size(); ++i) {
        add_word(a, typed[i]);
        total += typed[i].size();
      }
      for (size_t i = exact; i < c.words.size(); ++i) {
        add_word(b, c.words[i]);
        total += c.words[i].size();
      }
      const int d = distance(a, b);
      if (d >= static_cast<int>(5 * total / 2)) continue;
      best.push_back({&c, d});
    }
    std::stable_sort(best.begin(), best.end(),
                     [](const Match& x, const Match& y) { return x.dist < y.dist; });
    if (best.size() > kMaxMatches) best.resize(kMaxMatches);
    // Drop the candidates much further than the best one.
    while (!best.empty() && best.back().dist > 5 * best.front().dist / 2)
      best.pop_back();
  }
  std::vector<const CommandInfo*> shown;
  if (!best.empty()) {
    for (const Match& m : best)
      shown.push_back(m.c);
  } else {
    for (const CommandInfo& c : commands) {
      size_t n = 0;
      while (n < exact && n < c.words.size() && c.words[n] == typed[n])
        ++n;
      if (n == exact) shown.push_back(&c);
    }
  }
  return "Unknown command, but maybe one of the following ones is a better match:\n" +
         listing(shown);
}

}  // namespace spoad::cli
