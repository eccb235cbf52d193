#include "util/log.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace spoad::util {

namespace {
spdlog::level::level_enum g_level = spdlog::level::info;

std::shared_ptr<spdlog::sinks::sink> stderr_sink() {
  static auto sink = [] {
    auto s = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    s->set_pattern("%Y-%m-%dT%H:%M:%S.%e [%P] %n %l: %v");
    return s;
  }();
  return sink;
}
}  // namespace

void set_log_level(const std::string& level) {
  const auto lvl = spdlog::level::from_str(level);
  if (lvl == spdlog::level::off && level != "off") return;
  g_level = lvl;
  spdlog::apply_all([lvl](const std::shared_ptr<spdlog::logger>& l) { l->set_level(lvl); });
}

std::shared_ptr<spdlog::logger> make_logger(const std::string& name) {
  if (auto l = spdlog::get(name)) return l;
  auto l = std::make_shared<spdlog::logger>(name, stderr_sink());
  l->set_level(g_level);
  l->flush_on(spdlog::level::trace);
  spdlog::register_logger(l);
  return l;
}

}  // namespace spoad::util
