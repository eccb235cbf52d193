// The mirror agent's request model, free of I/O: decoding HAProxy's header samples, reducing
// a request-target to what goes to the mirror, and building the request that is replayed.
//
// HAProxy sides (configuration.txt, HAProxy 2.6):
//   req.hdrs_bin  *(<str:name><str:value>) <empty str><empty str>, each str being
//                 <varint length><bytes> with SPOE.txt 3.1's varint
//   req.hdrs      the header block as text: "Name: value\r\n" lines, ending with "\r\n"
//   url           the request-target as received: origin-form ("/a?b"), absolute-form
//                 ("https://host/a?b", also what HTTP/2 requests give) or "*"
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace spoad::agents::mirror {

struct Header {
  std::string_view name;
  std::string_view value;
};

// Decodes a req.hdrs_bin sample into `out` (views into `in`). The list ends with the empty
// name/value pair; input that ends exactly between two headers is accepted too. Returns "" on
// success, else what is wrong (truncated length or string, varint over 10 bytes, bytes after
// the end marker, a name that is not an RFC 9110 token, a value holding CR, LF or NUL).
std::string decode_hdrs_bin(std::string_view in, std::vector<Header>* out);

// Decodes a req.hdrs sample ("Name: value" lines separated by CRLF or LF, up to an empty line
// or the end). Leading and trailing spaces and tabs of a value are dropped. Returns "" on
// success, else what is wrong (a line without ':', a bad name, a NUL or CR in a value).
std::string decode_hdrs_text(std::string_view in, std::vector<Header>* out);

// The part of request-target `url` (bytes) that goes to the mirror: origin-form as it is;
// absolute-form (any scheme) loses its scheme, authority and fragment, keeping path and query
// byte for byte ("https://h/a?b" -> "/a?b", "http://h?x" -> "/?x", "http://h" -> "/",
// "http://h/a/../b" -> "/a/../b"); "*" stays "*". Returns false for anything else: a CR, LF,
// NUL, space or tab anywhere; authority-form of CONNECT, an empty target, a relative
// reference; an absolute-form target that libcurl's URL parser refuses (an empty or invalid
// host, a port over 65535, another control byte, more than 8,000,000 bytes). RFC 9112 3.2.
// One curl_url() parse for absolute-form, none otherwise.
bool request_target(std::string_view url, std::string* out);

// True for the headers that apply to one connection and never go to the mirror
// (RFC 9110 7.6.1, and the ones curl computes itself): Connection, Keep-Alive,
// Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade, HTTP2-Settings,
// Proxy-Authorization, Proxy-Authenticate, Expect and Content-Length. Case-insensitive.
bool is_hop_by_hop(std::string_view name);

// What a replay carries besides its body and URL.
struct ReplayHeaders {
  // Lines for curl's CURLOPT_HTTPHEADER, in the order of the request: "Name: value", "Name;"
  // for an empty value (curl's syntax), then "Name:" lines that stop curl from adding its own
  // Accept, Content-Type or Expect where the original request had none.
  std::vector<std::string> lines;
  bool has_body = false;          // send a body (with Content-Length), possibly empty
  long long content_length = -1;  // the original Content-Length, -1 if absent or invalid
};

struct HeaderRules {
  bool keep_host = true;                                 // false: the target's Host
  std::vector<std::string> remove;                       // names, any case
  std::vector<std::pair<std::string, std::string>> add;  // appended after the request's
};

// Builds the headers of the replay of a `method` request with `headers`: drops the hop-by-hop
// ones and those the Connection header names, the removed ones and, unless keep_host, Host;
// appends `add`. A body goes out for POST, PUT and PATCH, and for any other method except HEAD
// when `body_size` > 0 or the request announced a body (Content-Length, Transfer-Encoding).
ReplayHeaders build_headers(std::string_view method, const std::vector<Header>& headers,
                            size_t body_size, const HeaderRules& rules);

}  // namespace spoad::agents::mirror
