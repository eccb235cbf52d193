// Test support (tests only): a temporary directory for one test.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

namespace spoad::testing {

// A fresh directory under $TMPDIR (else /tmp), made by mkdtemp(3); the destructor removes it
// with its content. Throws std::runtime_error if it cannot be made.
class TempDir {
 public:
  TempDir() {
    const char* t = std::getenv("TMPDIR");
    std::string tmpl = std::string(t && *t ? t : "/tmp") + "/spoad-test-XXXXXX";
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // The path of `name` in the directory.
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  // Writes `content` to `name` in place (truncate and write), as `cat > file` does; returns
  // its path.
  std::string write(const std::string& name, const std::string& content) const {
    std::ofstream(file(name), std::ios::binary) << content;
    return file(name);
  }
  // Writes a new file and renames it over `name`, as editors and sed -i do; returns its path.
  std::string replace(const std::string& name, const std::string& content) const {
    const std::string tmp = file("." + name + ".tmp");
    std::ofstream(tmp, std::ios::binary) << content;
    std::filesystem::rename(tmp, file(name));
    return file(name);
  }

 private:
  std::string path_;
};

}  // namespace spoad::testing
