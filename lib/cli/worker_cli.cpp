#include "cli/worker_cli.h"

#include <ctime>

namespace spoad::cli {

namespace {

uint64_t now_s() {
  return static_cast<uint64_t>(std::time(nullptr));
}

const char* const kDisconnectNames[15] = {"normal",
                                          "io",
                                          "timeout",
                                          "too_big",
                                          "invalid",
                                          "no_version",
                                          "no_frame_size",
                                          "no_capabilities",
                                          "bad_version",
                                          "bad_frame_size",
                                          "frag_not_supported",
                                          "interlaced",
                                          "frame_id_not_found",
                                          "resource",
                                          "other"};

}  // namespace

WorkerCli::WorkerCli(runtime::Worker& worker, WorkerIdentity id)
    : worker_(worker), id_(std::move(id)) {}

std::vector<CommandInfo> WorkerCli::commands() const {
  std::vector<CommandInfo> c = {
      {{"show", "info"},
       usage_line("show info [json]", "report information about the running process")},
      {{"show", "stat"}, usage_line("show stat [json]", "report counters for each agent")},
      {{"show", "version"}, usage_line("show version", "show version of the current process")},
  };
  for (const auto& s : worker_.servers())
    for (const agent::CliCommand& ac : s->agent().cli_commands())
      c.push_back({split_commands(ac.name)[0],
                   usage_line(ac.syntax.empty() ? ac.name : ac.syntax, ac.description)});
  return c;
}

Fields WorkerCli::info() const {
  const uint64_t up = now_s() - id_.start_time_s;
  uint64_t cur = 0, idle = 0, cum = 0, notify = 0, ack = 0, msgs = 0, errors = 0, inflight = 0,
           health = 0, adopted = 0;
  std::string agents, types, listeners;
  for (const auto& s : worker_.servers()) {
    const runtime::Stats& st = s->stats();
    cur += st.conns_current;
    idle += st.conns_idle;
    cum += st.conns_total;
    notify += st.notify_total;
    ack += st.ack_total;
    msgs += st.messages_total;
    errors += st.errors_total();
    inflight += st.inflight;
    health += st.healthchecks;
    adopted += st.adopted;
    auto add = [](std::string& to, const std::string& v) { to += (to.empty() ? "" : ",") + v; };
    add(agents, s->config().name);
    add(types, s->config().type);
    add(listeners, s->address());
  }
  return {
      {"Name", "spoad"},
      {"Version", id_.version},
      {"Pid", id_.pid},
      {"Agent", agents},
      {"Agent_type", types},
      {"Relative_pid", id_.relative_pid},
      {"Process_num", id_.relative_pid},
      {"Generation", id_.generation},
      {"Uptime", info_uptime(up)},
      {"Uptime_sec", up},
      {"Start_time_sec", id_.start_time_s},
      {"Listen", listeners},
      {"CurrConns", cur},
      {"IdleConns", idle},
      {"CumConns", cum},
      {"CumAdopted", adopted},
      {"CumHealthChecks", health},
      {"CumNotify", notify},
      {"CumMessages", msgs},
      {"CumAck", ack},
      {"Inflight", inflight},
      {"CumErrors", errors},
      {"Stopping", worker_.stopping() ? 1 : 0},
  };
}

std::vector<Fields> WorkerCli::stat() const {
  std::vector<Fields> rows;
  for (const auto& s : worker_.servers()) {
    const runtime::Stats& st = s->stats();
    Fields f = {
        {"agent", s->config().name},
        {"type", s->config().type},
        {"pid", id_.pid},
        {"relative_pid", id_.relative_pid},
        {"applets", st.conns_current.get()},
        {"idles", st.conns_idle.get()},
        {"cum_conns", st.conns_total.get()},
        {"healthchecks", st.healthchecks.get()},
        {"nb_waiting", st.inflight.get()},
        {"nb_processed", st.ack_total.get()},
        {"cum_notify", st.notify_total.get()},
        {"cum_messages", st.messages_total.get()},
        {"fragmented", st.fragmented_total.get()},
        {"aborted", st.aborted_total.get()},
        {"ack_too_big", st.ack_too_big.get()},
        {"nb_error", st.errors_total()},
        {"disconnects_received", st.disconnects_received.get()},
        {"handed_off", st.handed_off.get()},
        {"adopted", st.adopted.get()},
        {"reassembly_bytes", s->reassembly_budget().used()},
        {"reassembly_bytes_max", s->reassembly_budget().peak()},
        {"reassembly_limit", s->reassembly_budget().limit()},
        {"reassembly_refused", st.reassembly_refused.get()},
        {"fragment_timeouts", st.fragment_timeouts.get()},
        {"max_connections", s->config().runtime.max_connections},
        {"max_conn_reached", st.max_conn_reached.get()},
        {"accept_errors", st.accept_errors.get()},
    };
    for (size_t i = 0; i < st.disconnects_sent.size(); ++i)
      f.emplace_back(std::string("disconnect_") + kDisconnectNames[i],
                     st.disconnects_sent[i].get());
    f.emplace_back("proc_time_avg_us", st.proc_time_avg_us());
    f.emplace_back("proc_time_max_us", st.proc_time_max_us);
    f.emplace_back("bytes_in", st.bytes_in.get());
    f.emplace_back("bytes_out", st.bytes_out.get());
    rows.push_back(std::move(f));
  }
  return rows;
}

nlohmann::json WorkerCli::stat_json() const {
  nlohmann::json out = nlohmann::json::object();
  const std::vector<Fields> rows = stat();
  for (size_t i = 0; i < rows.size(); ++i) {
    nlohmann::json a = nlohmann::json::object();
    for (const auto& [k, v] : rows[i])
      a[k] = v;
    nlohmann::json extra = nlohmann::json::object();
    worker_.servers()[i]->agent().stats(extra);
    a["agent_stats"] = extra;
    out[worker_.servers()[i]->config().name] = a;
  }
  return out;
}

WorkerCli::Result WorkerCli::run(const Words& w) {
  if (w.empty()) return {};
  if (w[0] == "help") return {true, help_message(commands())};
  if (w.size() >= 2 && w[0] == "show" && w[1] == "info") {
    if (w.size() >= 3 && w[2] == "json") return {true, info_json(info(), id_.relative_pid)};
    return {true, info_text(info())};
  }
  if (w.size() >= 2 && w[0] == "show" && w[1] == "stat") {
    if (w.size() >= 3 && w[2] == "json")  // agents' counters may hold outside bytes
      return {true,
              stat_json().dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n"};
    return {true, stat_csv(stat())};
  }
  if (w.size() == 2 && w[0] == "show" && w[1] == "version") return {true, id_.version + "\n"};
  for (const auto& s : worker_.servers())
    for (const agent::CliCommand& ac : s->agent().cli_commands()) {
      const Words name = split_commands(ac.name)[0];
      if (!matches({name, ""}, w)) continue;
      Result r;
      try {
        r.text = ac.run(Words(w.begin() + static_cast<long>(name.size()), w.end()));
      } catch (const agent::CommandError& e) {
        r = {false, e.what()};
      }
      if (!r.text.empty() && r.text.back() != '\n') r.text += '\n';
      return r;
    }
  return {false, unknown_command_message(commands(), w)};
}

}  // namespace spoad::cli
