// Fuzz target: the mirror's request model (agents/mirror/request.h). The input is decoded as a
// req.hdrs_bin sample, as a req.hdrs text block and as a request-target; whatever decodes is
// checked and fed to build_headers(). Properties:
//   - decode_hdrs_bin: names are RFC 9110 tokens, values hold no CR, LF or NUL; encoding the
//     headers again and decoding gives the same list;
//   - request_target: the result is "*" or starts with '/', and holds no CR, LF, NUL, space;
//   - build_headers: no line holds CR, LF or NUL (a line is handed to curl as a header: a
//     line break would inject a header), no hop-by-hop or removed header passes, the last line
//     is "Expect:", HEAD never has a body.
// The method, body size and header rules are taken from the input's length and last byte, so
// the whole input stays a hdrs_bin or text sample.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "agents/mirror/request.h"
#include "fuzz_check.h"
#include "spop/varint.h"
#include "util/text.h"

using namespace spoad::agents::mirror;

namespace {

bool clean(std::string_view s) {
  return s.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (unsigned char c : s) {
    const bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (!alnum &&
        std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) == std::string_view::npos)
      return false;
  }
  return true;
}

void put_str(std::string* out, std::string_view s) {
  uint8_t b[spoad::spop::kMaxVarintLength];
  const size_t n = spoad::spop::encode_varint(s.size(), b);
  out->append(reinterpret_cast<const char*>(b), n);
  out->append(s);
}

void check_headers(const std::vector<Header>& hs) {
  for (const Header& h : hs) {
    FUZZ_CHECK(is_token(h.name));
    FUZZ_CHECK(clean(h.value));
  }
}

void check_build(std::string_view in, const std::vector<Header>& headers) {
  static const char* kMethods[] = {"GET", "POST", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"};
  const unsigned char last = in.empty() ? 0 : static_cast<unsigned char>(in.back());
  const std::string method = kMethods[in.size() % 7];
  const size_t body = (last & 1) ? in.size() : 0;
  HeaderRules rules;
  rules.keep_host = (last & 2) != 0;
  if (last & 4) rules.remove = {"x-forwarded-for", "Cookie"};
  if (!headers.empty() && (last & 8)) rules.remove.emplace_back(headers.front().name);
  if (last & 16) rules.add = {{"X-Mirrored-By", "spoad"}, {"X-Empty", ""}};

  const ReplayHeaders r = build_headers(method, headers, body, rules);
  FUZZ_CHECK(!r.lines.empty() && r.lines.back() == "Expect:");
  FUZZ_CHECK(r.lines.size() <= headers.size() + rules.add.size() + 3);
  if (method == "HEAD") FUZZ_CHECK(!r.has_body);
  if (method == "POST" || method == "PUT" || method == "PATCH") FUZZ_CHECK(r.has_body);
  FUZZ_CHECK(r.content_length >= -1);
  // Layout: the request's headers, the added ones, then "Name:" lines (no space) that stop
  // curl from adding Accept, Content-Type or Expect.
  size_t tail = 0;
  while (tail < r.lines.size()) {
    const std::string& l = r.lines[r.lines.size() - 1 - tail];
    if (l.back() != ':' || l.find(' ') != std::string::npos) break;
    ++tail;
  }
  FUZZ_CHECK(tail >= 1 && tail <= 3 && r.lines.size() >= tail + rules.add.size());
  const size_t from_request = r.lines.size() - tail - rules.add.size();
  FUZZ_CHECK(from_request <= headers.size());
  for (size_t i = 0; i < r.lines.size(); ++i) {
    const std::string& line = r.lines[i];
    FUZZ_CHECK(clean(line));
    const size_t end = line.find_first_of(":;");
    FUZZ_CHECK(end != std::string::npos && end > 0);
    const std::string_view name = std::string_view(line).substr(0, end);
    FUZZ_CHECK(is_token(name));
    if (i >= from_request) continue;
    FUZZ_CHECK(!is_hop_by_hop(name));
    for (const std::string& x : rules.remove)
      FUZZ_CHECK(!spoad::util::iequals(x, name));
    if (!rules.keep_host) FUZZ_CHECK(!spoad::util::iequals(name, "host"));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);

  std::vector<Header> bin;
  const std::string bin_err = decode_hdrs_bin(in, &bin);
  if (bin_err.empty()) {
    check_headers(bin);
    std::string again;
    for (const Header& h : bin) {
      put_str(&again, h.name);
      put_str(&again, h.value);
    }
    put_str(&again, "");
    put_str(&again, "");
    std::vector<Header> bin2;
    FUZZ_CHECK(decode_hdrs_bin(again, &bin2).empty());
    FUZZ_CHECK(bin2.size() == bin.size());
    for (size_t i = 0; i < bin.size(); ++i)
      FUZZ_CHECK(bin[i].name == bin2[i].name && bin[i].value == bin2[i].value);
    check_build(in, bin);
  }

  std::vector<Header> text;
  if (decode_hdrs_text(in, &text).empty()) {
    check_headers(text);
    for (const Header& h : text) {
      // Values come trimmed of spaces and tabs.
      FUZZ_CHECK(h.value.empty() || (h.value.front() != ' ' && h.value.front() != '\t' &&
                                     h.value.back() != ' ' && h.value.back() != '\t'));
    }
    check_build(in, text);
  }

  std::string target;
  if (request_target(in, &target)) {
    FUZZ_CHECK(target == "*" || (!target.empty() && target.front() == '/'));
    FUZZ_CHECK(clean(target) && target.find_first_of(" \t") == std::string::npos);
  }
  return 0;
}
