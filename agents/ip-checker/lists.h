// Reading the ip-checker's lists: inline entries and list files.
//
// File format: one entry per line, an address ("192.0.2.1", "2001:db8::1") or a CIDR
// ("192.0.2.0/24", "2001:db8::/32"). A '#' or ';' starts a comment that runs to the end of the
// line, whole-line or trailing. Blank lines, surrounding spaces and tabs, CR before LF and a
// UTF-8 byte order mark are ignored. This reads FireHOL .netset/.ipset files and Spamhaus DROP
// files ("1.10.16.0/20 ; SBL256894") as they are. Host bits set in a CIDR are cleared
// ("10.0.0.1/8" is 10.0.0.0/8) and counted. Any other line is an error, and the whole file is
// rejected.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "agents/ip-checker/matcher.h"

namespace spoad::agents::ip_checker {

// The parsed content of one list.
struct ParsedList {
  PrefixSet prefixes;
  size_t masked = 0;  // entries whose host bits were cleared
  size_t lines = 0;   // lines read (files only)
};

// Identity of a file's content as stat() sees it, to tell whether it changed.
struct FileSig {
  bool exists = false;
  dev_t dev = 0;
  ino_t ino = 0;
  off_t size = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  // Set by load_list_file() when the file was modified less than 2 s before it was read: a
  // later write within the same timestamp tick could leave every field above unchanged, so
  // such a file is read again on the next change event even if its signature matches.
  bool racy = false;
  bool operator==(const FileSig&) const = default;
};

// stat() of `path` (following symlinks). A missing file gives exists = false.
FileSig file_sig(const std::string& path);

// Adds one entry (already trimmed, no comment) to `out`. On error returns false and sets
// *why to a static explanation.
bool add_entry(std::string_view entry, ParsedList* out, const char** why);

// Parses the text of a list file. `source` names it in errors. On the first malformed line
// returns false and sets *err to "SOURCE:LINE: malformed entry \"...\": why"; `out` is then
// partly filled and must be discarded.
bool parse_list_text(std::string_view text, const std::string& source, ParsedList* out,
                     std::string* err);

// Reads and parses the list file at `path`. On failure (cannot open or read, malformed line)
// returns false and sets *err to a message naming the file (and line). When `sig` is not null
// it receives the file's signature, taken before reading.
bool load_list_file(const std::string& path, ParsedList* out, std::string* err, FileSig* sig);

}  // namespace spoad::agents::ip_checker
