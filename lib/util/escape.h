// Bytes that came from outside (a peer's frame, a file, the CLI) made safe to log, to show
// or to put in JSON. Such bytes are never assumed to be text: they may be invalid UTF-8, hold
// control characters, or be megabytes long. Every function here is total: none throws, none
// reads past `s`, and each output has a bound given in bytes.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace spoad::util {

// `s` as printable ASCII for a log line or a CLI answer: bytes 0x20-0x7e are kept, except
// '\\' and '"', which become "\\\\" and "\\\""; every other byte becomes "\\xNN". At most
// `max` bytes of `s` are shown; when `s` is longer, "...(N bytes)" follows, N being s.size().
// The result never holds a control character, so it cannot forge a log line or a terminal
// escape sequence.
std::string printable(std::string_view s, size_t max = 256);

// True if `s` is well-formed UTF-8 (RFC 3629, Unicode 3.9 table 3-7): no overlong forms, no
// surrogates (U+D800-U+DFFF), nothing above U+10FFFF, no truncated sequence.
bool is_utf8(std::string_view s);

// Appends `s` to `out` as a JSON string literal (RFC 8259 section 7), quotes included:
// '"', '\\' and control bytes are escaped; well-formed UTF-8 sequences are copied; each byte
// of an ill-formed sequence becomes U+FFFD (EF BF BD). The result is always valid UTF-8 JSON.
void append_json_string(std::string& out, std::string_view s);

// `s` with each ill-formed UTF-8 byte replaced by U+FFFD, as append_json_string does, but
// with no quoting or escaping: for text handed to a library that requires UTF-8.
std::string to_utf8(std::string_view s);

}  // namespace spoad::util
