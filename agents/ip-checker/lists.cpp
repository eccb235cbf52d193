#include "agents/ip-checker/lists.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <vector>

#include "util/escape.h"
#include "util/text.h"

namespace spoad::agents::ip_checker {

namespace {

constexpr size_t kReadChunk = 1 << 20;  // bytes read at a time
constexpr size_t kMaxLine = 4096;       // longer lines are errors (no entry is that long)
constexpr size_t kShownEntry = 64;      // bytes of a malformed entry quoted in an error
constexpr size_t kShownPath = 4096;     // bytes of a file name in an error (PATH_MAX)

// A file name as errors show it: file names are bytes, and errors reach logs and the CLI.
std::string shown(const std::string& path) {
  return util::printable(path, kShownPath);
}

// One line of a list file (without its '\n').
bool parse_line(std::string_view line, size_t lineno, const std::string& source, ParsedList* out,
                std::string* err) {
  if (line.size() > kMaxLine) {
    *err = shown(source) + ":" + std::to_string(lineno) + ": line too long (more than " +
           std::to_string(kMaxLine) + " bytes)";
    return false;
  }
  if (lineno == 1 && line.starts_with("\xEF\xBB\xBF")) line.remove_prefix(3);
  const size_t comment = line.find_first_of("#;");
  if (comment != std::string_view::npos) line = line.substr(0, comment);
  line = util::trim(line, util::kWhitespace);  // `line` holds no '\n'
  if (line.empty()) return true;
  const char* why = "";
  if (add_entry(line, out, &why)) return true;
  *err = shown(source) + ":" + std::to_string(lineno) + ": malformed entry \"" +
         util::printable(line, kShownEntry) + "\": " + why;
  return false;
}

int64_t ns_of(const struct timespec& t) {
  return int64_t{t.tv_sec} * 1'000'000'000 + t.tv_nsec;
}

}  // namespace

FileSig file_sig(const std::string& path) {
  FileSig s;
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return s;
  s.exists = true;
  s.dev = st.st_dev;
  s.ino = st.st_ino;
  s.size = st.st_size;
  s.mtime_ns = ns_of(st.st_mtim);
  s.ctime_ns = ns_of(st.st_ctim);
  return s;
}

bool add_entry(std::string_view entry, ParsedList* out, const char** why) {
  Prefix p;
  bool masked = false;
  if (!parse_prefix(entry, &p, &masked, why)) return false;
  out->prefixes.add(p);
  if (masked) ++out->masked;
  return true;
}

bool parse_list_text(std::string_view text, const std::string& source, ParsedList* out,
                     std::string* err) {
  size_t lineno = 0;
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    const std::string_view line = text.substr(0, nl);
    ++lineno;
    if (!parse_line(line, lineno, source, out, err)) return false;
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
  out->lines = lineno;
  return true;
}

bool load_list_file(const std::string& path, ParsedList* out, std::string* err, FileSig* sig) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *err = shown(path) + ": cannot open: " + std::strerror(errno);
    return false;
  }
  if (sig) {
    *sig = FileSig{};
    struct stat st;
    if (::fstat(fd, &st) == 0) {
      sig->exists = true;
      sig->dev = st.st_dev;
      sig->ino = st.st_ino;
      sig->size = st.st_size;
      sig->mtime_ns = ns_of(st.st_mtim);
      sig->ctime_ns = ns_of(st.st_ctim);
      struct timespec now;
      clock_gettime(CLOCK_REALTIME, &now);
      sig->racy =
          sig->mtime_ns > ns_of(now) - 2'000'000'000 || sig->ctime_ns > ns_of(now) - 2'000'000'000;
    }
  }
  // Read in chunks and parse whole lines, so a large file never sits in memory at once.
  std::vector<char> buf(kReadChunk);
  size_t have = 0;  // bytes of an unfinished line at the front of buf
  size_t lineno = 0;
  bool ok = true;
  bool eof = false;
  while (ok && !eof) {
    const ssize_t n = ::read(fd, buf.data() + have, buf.size() - have);
    if (n < 0) {
      if (errno == EINTR) continue;
      *err = shown(path) + ": cannot read: " + std::strerror(errno);
      ok = false;
      break;
    }
    eof = n == 0;
    const size_t end = have + static_cast<size_t>(n);
    std::string_view data(buf.data(), end);
    size_t pos = 0;
    while (ok) {
      const size_t nl = data.find('\n', pos);
      if (nl == std::string_view::npos) break;
      ok = parse_line(data.substr(pos, nl - pos), ++lineno, path, out, err);
      pos = nl + 1;
    }
    if (!ok) break;
    have = end - pos;
    if (eof) {
      if (have > 0) ok = parse_line(data.substr(pos), ++lineno, path, out, err);
      break;
    }
    if (have > kMaxLine) {
      *err = shown(path) + ":" + std::to_string(lineno + 1) + ": line too long (more than " +
             std::to_string(kMaxLine) + " bytes)";
      ok = false;
      break;
    }
    std::memmove(buf.data(), buf.data() + pos, have);
  }
  ::close(fd);
  if (!ok) return false;
  out->lines = lineno;
  out->prefixes.v4.shrink_to_fit();
  out->prefixes.v6.shrink_to_fit();
  return true;
}

}  // namespace spoad::agents::ip_checker
