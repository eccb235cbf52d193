// Helpers shared by the ip-checker's unit tests (gtest): addresses and prefixes from text, and
// a temporary directory for list files.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

#include "agents/ip-checker/address.h"

namespace spoad::agents::ip_checker::test {

inline Address A(const std::string& s) {
  Address a;
  EXPECT_TRUE(parse_address(s, &a)) << s;
  return a;
}

inline Prefix P(const std::string& s) {
  Prefix p;
  bool masked = false;
  const char* why = "";
  EXPECT_TRUE(parse_prefix(s, &p, &masked, &why)) << s << ": " << why;
  return p;
}

// A fresh directory under $TMPDIR (else /tmp), removed with its content by the destructor.
class TempDir {
 public:
  TempDir() {
    const char* t = std::getenv("TMPDIR");
    std::string tmpl = std::string(t && *t ? t : "/tmp") + "/ipc-test-XXXXXX";
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  // Writes in place (truncate and write), as `cat > file` does.
  std::string write(const std::string& name, const std::string& content) const {
    std::ofstream(file(name), std::ios::binary) << content;
    return file(name);
  }
  // Writes a new file and renames it over `name`, as editors and sed -i do.
  std::string replace(const std::string& name, const std::string& content) const {
    const std::string tmp = file("." + name + ".tmp");
    std::ofstream(tmp, std::ios::binary) << content;
    std::filesystem::rename(tmp, file(name));
    return file(name);
  }

 private:
  std::string path_;
};

}  // namespace spoad::agents::ip_checker::test
