#include "cli/format.h"

#include <cstdio>

namespace spoad::cli {

namespace {

std::string pad15(const std::string& s) {
  std::string out = s;
  if (out.size() < 15) out.append(15 - out.size(), ' ');
  return out;
}

std::string row(const std::vector<std::string>& cols) {
  std::string s;
  for (size_t i = 0; i < cols.size(); ++i) {
    if (i) s += ' ';
    s += pad15(cols[i]);
  }
  return s + "\n";
}

std::string scalar(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "1" : "0";
  if (v.is_null()) return "";
  return v.dump();
}

}  // namespace

std::string proc_uptime(uint64_t s) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%llud%02uh%02um%02us",
                static_cast<unsigned long long>(s / 86400), static_cast<unsigned>(s / 3600 % 24),
                static_cast<unsigned>(s / 60 % 60), static_cast<unsigned>(s % 60));
  return buf;
}

std::string info_uptime(uint64_t s) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%llud %uh%02um%02us", static_cast<unsigned long long>(s / 86400),
                static_cast<unsigned>(s / 3600 % 24), static_cast<unsigned>(s / 60 % 60),
                static_cast<unsigned>(s % 60));
  return buf;
}

std::string show_proc(const ProcRow& master, int failed_reloads,
                      const std::vector<ProcRow>& workers,
                      const std::vector<ProcRow>& old_workers) {
  std::string out = "#" + std::string("<PID>").append(9, ' ') + " " +
                    row({"<type>", "<relative PID>", "<reloads>", "<uptime>", "<version>"});
  out += row({std::to_string(master.pid), "master", std::to_string(master.relative_pid),
              std::to_string(master.reloads) + " [failed: " + std::to_string(failed_reloads) + "]",
              proc_uptime(master.uptime_s), master.version});
  auto rows = [&out](const std::vector<ProcRow>& procs) {
    for (const ProcRow& p : procs)
      out += row({std::to_string(p.pid), p.type, std::to_string(p.relative_pid),
                  std::to_string(p.reloads), proc_uptime(p.uptime_s), p.version});
  };
  out += "# workers\n";
  rows(workers);
  if (!old_workers.empty()) {
    out += "# old workers\n";
    rows(old_workers);
  }
  return out;
}

std::string info_text(const Fields& fields) {
  std::string out;
  for (const auto& [name, value] : fields)
    out += name + ": " + scalar(value) + "\n";
  return out;
}

std::string info_json(const Fields& fields, int process_num) {
  nlohmann::json arr = nlohmann::json::array();
  int pos = 0;
  for (const auto& [name, value] : fields) {
    nlohmann::json v;
    if (value.is_number_unsigned())
      v = {{"type", "u64"}, {"value", value}};
    else if (value.is_number_integer())
      v = {{"type", "s64"}, {"value", value}};
    else if (value.is_boolean())
      v = {{"type", "u32"}, {"value", value.get<bool>() ? 1 : 0}};
    else
      v = {{"type", "str"}, {"value", scalar(value)}};
    arr.push_back(
        {{"field", {{"pos", pos++}, {"name", name}}}, {"processNum", process_num}, {"value", v}});
  }
  // Strings may hold any bytes (a unix socket path): ill-formed UTF-8 becomes U+FFFD.
  return arr.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

std::string stat_csv(const std::vector<Fields>& rows) {
  if (rows.empty()) return "";
  std::string out = "# ";
  for (size_t i = 0; i < rows[0].size(); ++i)
    out += (i ? "," : "") + rows[0][i].first;
  out += "\n";
  for (const Fields& r : rows) {
    for (size_t i = 0; i < r.size(); ++i) {
      std::string v = scalar(r[i].second);
      for (char& c : v)
        if (c == ',' || c == '\n') c = ' ';
      out += (i ? "," : "") + v;
    }
    out += "\n";
  }
  return out;
}

std::string pool_answer(std::string_view agent, const std::vector<PoolMember>& members,
                        const std::vector<WorkerAnswer>& answers) {
  using Status = WorkerAnswer::Status;
  struct Group {
    bool ok;
    std::string text;
    std::string rels, pids;
  };
  std::vector<Group> groups;
  size_t applied = 0, failed = 0, gone = 0;
  for (size_t i = 0; i < answers.size() && i < members.size(); ++i) {
    const WorkerAnswer& a = answers[i];
    if (a.status == Status::kGone) {
      ++gone;
      continue;
    }
    const bool ok = a.status == Status::kOk;
    (ok ? applied : failed) += 1;
    std::string text = a.status == Status::kNoAnswer ? "No answer from the worker.\n" : a.text;
    if (!text.empty() && text.back() != '\n') text += '\n';
    Group* g = nullptr;
    for (Group& x : groups)
      if (x.ok == ok && x.text == text) g = &x;
    if (!g) g = &groups.emplace_back(Group{ok, std::move(text), "", ""});
    g->rels += (g->rels.empty() ? "" : ",") + std::to_string(members[i].relative_pid);
    g->pids += (g->pids.empty() ? "" : ",") + std::to_string(members[i].pid);
  }
  std::string out;
  if (groups.size() == 1) {
    out = groups[0].text;
  } else {
    for (const Group& g : groups)
      out += "# workers " + g.rels + " (pids " + g.pids + "):\n" + g.text;
  }
  out += "# " + std::string(agent) + ": applied on " + std::to_string(applied) + " of " +
         std::to_string(answers.size()) + " workers";
  if (failed) out += ", failed on " + std::to_string(failed);
  if (gone) out += ", " + std::to_string(gone) + " gone";
  return out + "\n";
}

}  // namespace spoad::cli
