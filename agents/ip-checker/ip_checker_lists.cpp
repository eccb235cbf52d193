// IpCheckerAgent (ip_checker.h): its list files. The load at creation, reloads on the libuv
// thread pool (a Job: read and build off the loop, applied on it), the watchers of the lists'
// directories, and the lists' part of stats().
#include <sys/stat.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <stdexcept>

#include "agents/ip-checker/commands.h"
#include "agents/ip-checker/ip_checker.h"
#include "util/clock.h"
#include "util/escape.h"

namespace spoad::agents::ip_checker {

namespace {

using util::ms_since;
using util::wall_ms;

// "2024-05-01T12:00:00Z", or "-" for 0.
std::string format_time(int64_t ms) {
  return ms == 0 ? "-" : format_utc(ms / 1000);
}

#if defined(__GLIBC__)
void release_free_memory() {
  malloc_trim(0);
}
#else
void release_free_memory() {}
#endif

}  // namespace

// ---- reload jobs ------------------------------------------------------------------------

// One load of the lists. Built on the loop thread from the current state, run by load() on
// the thread pool (or inline), applied by apply() on the loop thread. Owns copies of all it
// reads, so nothing is shared with the loop thread while it runs.
struct IpCheckerAgent::Job {
  uv_work_t req{};
  IpCheckerAgent* self = nullptr;  // nulled if the agent goes away first
  bool force = false;              // re-read every file, changed or not
  bool rebuild = false;            // build the matcher even if no list changed

  struct In {
    ListInfo info;
    std::string file;  // "" for inline lists
    std::shared_ptr<const ParsedList> data;
    FileSig sig;
  };
  struct Out {
    bool attempted = false;  // the file was read
    bool ok = false;
    std::shared_ptr<const ParsedList> data;  // when ok
    FileSig sig;
    std::string error;
    double ms = 0;
  };
  std::vector<In> in;
  std::vector<Out> out;
  std::shared_ptr<const Matcher> matcher;  // the new matcher; null if nothing changed
  double build_ms = 0;
  std::string build_error;
};

void IpCheckerAgent::load(Job& job) {
  static const ParsedList kEmpty;
  job.out.assign(job.in.size(), Job::Out{});
  bool changed = job.rebuild;
  for (size_t i = 0; i < job.in.size(); ++i) {
    const Job::In& in = job.in[i];
    Job::Out& out = job.out[i];
    if (in.file.empty()) continue;
    if (!job.force && !in.sig.racy && file_sig(in.file) == in.sig) continue;
    out.attempted = true;
    const auto t0 = std::chrono::steady_clock::now();
    try {
      auto pl = std::make_shared<ParsedList>();
      if (load_list_file(in.file, pl.get(), &out.error, &out.sig)) {
        out.ok = true;
        out.data = std::move(pl);
        changed = true;
      }
    } catch (const std::exception& e) {
      out.error = util::printable(in.file, 4096) + ": " + util::printable(e.what());
    }
    out.ms = ms_since(t0);
  }
  if (!changed) return;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<Matcher::Input> inputs;
  inputs.reserve(job.in.size());
  for (size_t i = 0; i < job.in.size(); ++i) {
    const ParsedList* pl = job.out[i].ok ? job.out[i].data.get() : job.in[i].data.get();
    inputs.push_back({&job.in[i].info, pl ? &pl->prefixes : &kEmpty.prefixes});
  }
  try {
    job.matcher = std::make_shared<const Matcher>(Matcher::build(inputs));
  } catch (const std::exception& e) {
    job.build_error = e.what();
  }
  job.build_ms = ms_since(t0);
}

std::unique_ptr<IpCheckerAgent::Job> IpCheckerAgent::make_job(bool force) const {
  auto job = std::make_unique<Job>();
  job->force = force;
  job->in.reserve(lists_.size());
  for (const ListState& st : lists_)
    job->in.push_back({st.cfg.info, st.cfg.file, st.data, st.sig});
  return job;
}

void IpCheckerAgent::apply(Job& job, bool startup) {
  const int64_t now = wall_ms();
  for (size_t i = 0; i < job.out.size(); ++i) {
    Job::Out& o = job.out[i];
    ListState& st = lists_[i];
    if (!o.attempted) continue;
    if (o.ok && !job.build_error.empty()) {
      // Read, but the table could not be built (out of memory): keep the old entries, and the
      // old signature so that the next change or reload reads the file again.
      o.ok = false;
      o.error = "cannot build the lookup table: " + job.build_error;
      o.sig = st.sig;
    }
    st.sig = o.sig;
    if (o.ok) {
      st.data = o.data;
      st.loaded_at_ms = now;
      st.error.clear();
      if (!startup) {
        ++st.reloads_ok;
        ++reloads_ok_;
      }
      ctx_.log->info("list {}: {} {} entries from {} in {:.0f} ms", st.cfg.info.name,
                     startup ? "loaded" : "reloaded", st.data->prefixes.size(),
                     util::printable(st.cfg.file, 4096), o.ms);
      if (st.data->masked > 0)
        ctx_.log->warn(
            "list {}: {} entries of {} had host bits set beyond their prefix length; "
            "they were cleared (10.0.0.1/8 is read as 10.0.0.0/8)",
            st.cfg.info.name, st.data->masked, util::printable(st.cfg.file, 4096));
    } else {
      st.error = o.error;
      if (!startup) {
        ++st.reloads_failed;
        ++reloads_failed_;
        ctx_.log->error("list {}: reload failed, keeping the {} entries loaded at {}: {}",
                        st.cfg.info.name, st.data ? st.data->prefixes.size() : 0,
                        format_time(st.loaded_at_ms), o.error);
      }
    }
  }
  if (job.matcher) {
    matcher_ = job.matcher;
    ctx_.log->info(
        "lookup table: {} prefixes, {} IPv4 and {} IPv6 ranges, {:.1f} MiB, built in "
        "{:.0f} ms",
        matcher_->prefixes(), matcher_->ranges_v4(), matcher_->ranges_v6(),
        static_cast<double>(matcher_->memory_bytes()) / (1 << 20), job.build_ms);
  }
  update_entry_gauges();
  if (!startup) {
    last_reload_ms_ = now;
    ++reloads_completed_;
  }
}

void IpCheckerAgent::load_lists() {
  std::unique_ptr<Job> job = make_job(true);
  job->rebuild = true;
  load(*job);
  for (size_t i = 0; i < job->out.size(); ++i) {
    if (job->out[i].attempted && !job->out[i].ok)
      throw std::runtime_error("list \"" + lists_[i].cfg.info.name + "\": " + job->out[i].error);
  }
  if (!job->matcher) throw std::runtime_error("cannot build the lookup table: " + job->build_error);
  apply(*job, true);
  job.reset();
  release_free_memory();  // the parse and build temporaries
}

void IpCheckerAgent::detach_reload() {
  if (job_) job_->self = nullptr;
}

void IpCheckerAgent::start_watchers() {
  // Watch the directories, not the files: editors and tools replace a file by renaming a new
  // one over it, which ends a watch on the file itself.
  std::map<std::string, std::vector<const ListState*>> dirs;
  for (const ListState& st : lists_) {
    if (st.cfg.file.empty()) continue;
    std::string dir = std::filesystem::path(st.cfg.file).parent_path().string();
    dirs[dir.empty() ? "." : dir].push_back(&st);
  }
  if (dirs.empty()) return;
  timer_ = new_timer();
  for (const auto& [dir, files] : dirs) {
    HandleBox* b = handles_.make();
    Watched& w = b->extra;
    w.dir = dir;
    for (const ListState* st : files) {
      w.names.push_back(std::filesystem::path(st->cfg.file).filename().string());
      struct stat lst;
      if (::lstat(st->cfg.file.c_str(), &lst) == 0 && S_ISLNK(lst.st_mode)) w.any_event = true;
    }
    uv_fs_event_init(ctx_.loop, &b->u.fs);  // cannot fail
    const int rc = uv_fs_event_start(&b->u.fs, on_fs_event, dir.c_str(), 0);
    if (rc != 0) {
      ctx_.log->error("cannot watch {}: {}; its lists reload only on a reload command",
                      util::printable(dir, 4096), uv_strerror(rc));
      handles_.close(b);
      continue;
    }
    ctx_.log->debug("watching {} for changes to {} list file(s)", util::printable(dir, 4096),
                    files.size());
  }
}

void IpCheckerAgent::on_fs_event(uv_fs_event_t* h, const char* filename, int events, int status) {
  (void)events;
  HandleBox* b = HandleBox::from(h);
  if (!b->live()) return;
  IpCheckerAgent* self = b->owner();
  if (self->stopping_) return;
  const Watched& w = b->extra;
  if (status < 0) {
    self->ctx_.log->warn("watching {}: {}", util::printable(w.dir, 4096), uv_strerror(status));
    return;
  }
  if (!w.any_event && filename &&
      std::find(w.names.begin(), w.names.end(), filename) == w.names.end())
    return;
  self->file_changed();
}

void IpCheckerAgent::file_changed() {
  if (!timer_ || timer_->closing()) return;
  // Wait for watch-delay without events (a file is often written in several steps), but no
  // longer than max(1 s, 5 x watch-delay) after the first one.
  const uint64_t now = uv_now(ctx_.loop);
  if (!timer_armed_) {
    timer_armed_ = true;
    first_change_ms_ = now;
  }
  const uint64_t delay = opts_.watch_delay_ms;
  const uint64_t latest = first_change_ms_ + std::max<uint64_t>(1000, 5 * delay);
  const uint64_t due = std::max(now, std::min(now + delay, latest));
  uv_timer_start(&timer_->u.timer, on_timer, due - now, 0);
}

void IpCheckerAgent::on_timer(uv_timer_t* t) {
  HandleBox* b = HandleBox::from(t);
  if (!b->live()) return;
  IpCheckerAgent* self = b->owner();
  self->timer_armed_ = false;
  self->start_reload(false);
}

void IpCheckerAgent::reload() {
  start_reload(true);
}

void IpCheckerAgent::start_reload(bool force) {
  if (stopping_) return;
  if (!ctx_.loop) {
    std::unique_ptr<Job> job = make_job(force);
    load(*job);
    apply(*job, false);
    return;
  }
  if (job_) {
    (force ? pending_force_ : pending_) = true;
    return;
  }
  std::unique_ptr<Job> job = make_job(force);
  job->self = this;
  job->req.data = job.get();
  const int rc = uv_queue_work(ctx_.loop, &job->req, on_work, on_work_done);
  if (rc != 0) {
    ctx_.log->error("cannot start a reload of the lists: {}", uv_strerror(rc));
    return;
  }
  job_ = job.release();
}

void IpCheckerAgent::on_work(uv_work_t* req) {
  load(*static_cast<Job*>(req->data));
}

void IpCheckerAgent::on_work_done(uv_work_t* req, int status) {
  std::unique_ptr<Job> job(static_cast<Job*>(req->data));
  IpCheckerAgent* self = job->self;
  if (!self) return;
  self->job_ = nullptr;
  if (status == 0) self->apply(*job, false);
  job.reset();  // drops the replaced lists and matcher
  release_free_memory();
  if (self->stopping_) {
    self->finish_stop_if_idle();
  } else if (self->pending_force_) {
    self->pending_force_ = self->pending_ = false;
    self->start_reload(true);
  } else if (self->pending_) {
    self->pending_ = false;
    self->start_reload(false);
  }
}

void IpCheckerAgent::list_stats(nlohmann::json& out) const {
  out["last_reload"] = last_reload_ms_ ? nlohmann::json(format_time(last_reload_ms_)) : nullptr;
  out["reload_running"] = job_ != nullptr;
  out["prefixes"] = matcher_->prefixes();
  out["ranges_v4"] = matcher_->ranges_v4();
  out["ranges_v6"] = matcher_->ranges_v6();
  out["table_bytes"] = matcher_->memory_bytes();
  nlohmann::json lists = nlohmann::json::array();
  for (const ListState& st : lists_) {
    nlohmann::json l;
    l["name"] = st.cfg.info.name;
    l["kind"] = st.cfg.info.allow ? "allow" : "deny";
    if (!st.cfg.info.allow) l["score"] = st.cfg.info.score;
    l["entries"] = st.data ? st.data->prefixes.size() : 0;
    l["source"] = !st.cfg.file.empty()    ? util::to_utf8(st.cfg.file)
                  : st.cfg.inline_entries ? "inline"
                                          : "runtime";
    l["runtime_entries"] = runtime_.size(static_cast<int32_t>(&st - lists_.data()));
    l["loaded_at"] = format_time(st.loaded_at_ms);
    l["status"] = st.error.empty() ? "ok" : "failed";
    if (!st.error.empty()) l["error"] = st.error;
    l["reloads_ok"] = st.reloads_ok;
    l["reloads_failed"] = st.reloads_failed;
    lists.push_back(std::move(l));
  }
  out["lists"] = std::move(lists);
}

}  // namespace spoad::agents::ip_checker
