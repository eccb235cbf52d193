// Logging: spdlog loggers writing to stderr, one per component ("spoad", each agent name),
// with the pid in every line so that the master's and the workers' lines can be told apart
// when they share HAProxy's output.
#pragma once

#include <spdlog/logger.h>

#include <memory>
#include <string>

namespace spoad::util {

// Sets the level of every logger made by make_logger ("info", "debug", ...). Unknown names
// keep the current level.
void set_log_level(const std::string& level);

// The logger called `name`, created on first use.
std::shared_ptr<spdlog::logger> make_logger(const std::string& name);

}  // namespace spoad::util
