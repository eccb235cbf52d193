#include "cli/worker_cli.h"

#include <ctime>

namespace spoad::cli {

namespace {

uint64_t now_s() {
  return static_cast<uint64_t>(std::time(nullptr));
}

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
  using Id = runtime::Stats::Id;
  std::vector<Fields> rows;
  for (const auto& s : worker_.servers()) {
    const runtime::Stats& st = s->stats();
    const auto& reassembly = s->reassembly_budget();
    Fields f = {
        {"agent", s->config().name},
        {"type", s->config().type},
        {"pid", id_.pid},
        {"relative_pid", id_.relative_pid},
    };
    // The columns in their order (users parse them by position): counters by their key in
    // runtime/stats.h, then what is computed here.
    auto put = [&](std::initializer_list<Id> ids) {
      for (Id id : ids)
        f.emplace_back(runtime::Stats::key(id), st.get(id));
    };
    put({Id::conns_current, Id::conns_idle, Id::conns_total, Id::healthchecks, Id::inflight,
         Id::ack_total, Id::notify_total, Id::messages_total, Id::fragmented_total,
         Id::aborted_total, Id::ack_too_big});
    f.emplace_back("nb_error", st.errors_total());
    put({Id::disconnects_received, Id::handed_off, Id::adopted});
    f.emplace_back("reassembly_bytes", reassembly.used());
    f.emplace_back("reassembly_bytes_max", reassembly.peak());
    f.emplace_back("reassembly_limit", reassembly.limit());
    put({Id::reassembly_refused, Id::fragment_timeouts});
    f.emplace_back("max_connections", s->config().runtime.max_connections);
    put({Id::max_conn_reached, Id::accept_errors});
    for (size_t i = 0; i < st.disconnects_sent.size(); ++i)
      f.emplace_back(runtime::Stats::disconnect_key(i), st.disconnects_sent[i].get());
    f.emplace_back("proc_time_avg_us", st.proc_time_avg_us());
    f.emplace_back("proc_time_max_us", st.proc_time_max_us);
    put({Id::bytes_in, Id::bytes_out});
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
