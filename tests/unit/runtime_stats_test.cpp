// Unit tests of the runtime's counters (lib/runtime/stats.h), declared once in
// SPOAD_RUNTIME_COUNTERS and SPOAD_RUNTIME_BUDGETS: the families they register and their
// order (the order of /metrics), and the columns of `show stat` (users parse both, so both
// are pinned here exactly as they were before the lists).
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "cli/worker_cli.h"
#include "config/config.h"
#include "metrics/arena.h"
#include "runtime/stats.h"
#include "runtime/worker.h"
#include "tests/support/temp_dir.h"
#include "tests/support/test_loop.h"

namespace spoad::runtime {
namespace {

TEST(RuntimeStats, RegistersItsFamiliesInTheirOrder) {
  auto arena = std::shared_ptr<metrics::Arena>(metrics::Arena::private_memory());
  const metrics::Scope scope(arena, "a", "t");
  Stats st(scope);
  std::string families, labels;
  arena->visit([&](const metrics::SeriesView& s) {
    if (s.role == metrics::Role::kBucket || s.role == metrics::Role::kCount) return;
    if (families.empty() || !families.ends_with(std::string(s.family) + "\n"))
      families += std::string(s.family) + "\n";
    std::string_view l = s.labels;
    l.remove_prefix(std::string_view(R"(agent="a",type="t")").size());
    if (!l.empty()) labels += std::string(l.substr(1)) + " ";
  });
  EXPECT_EQ(families,
            "spoad_connections\nspoad_connections_idle\nspoad_connections_total\n"
            "spoad_hello_total\nspoad_healthchecks_total\nspoad_notify_total\n"
            "spoad_messages_total\nspoad_ack_total\nspoad_notify_in_flight\n"
            "spoad_notify_fragmented_total\nspoad_notify_aborted_total\n"
            "spoad_disconnects_received_total\nspoad_connections_handed_off_total\n"
            "spoad_connections_adopted_total\nspoad_frames_received_total\n"
            "spoad_frames_sent_total\nspoad_received_bytes_total\nspoad_sent_bytes_total\n"
            "spoad_processing_seconds\nspoad_disconnects_sent_total\n"
            "spoad_protocol_errors_total\nspoad_budget_refusals_total\n");
  EXPECT_EQ(labels,
            R"(status="normal" status="io-error" status="timeout" status="frame-too-big" )"
            R"(status="invalid-frame" status="no-version" status="no-frame-size" )"
            R"(status="no-capabilities" status="bad-version" status="bad-frame-size" )"
            R"(status="fragmentation-not-supported" status="interlaced-frames" )"
            R"(status="frame-id-not-found" status="resource-error" status="other" )"
            R"(kind="io-error" kind="timeout" kind="frame-too-big" kind="invalid-frame" )"
            R"(kind="no-version" kind="no-frame-size" kind="no-capabilities" )"
            R"(kind="bad-version" kind="bad-frame-size" kind="fragmentation-not-supported" )"
            R"(kind="interlaced-frames" kind="frame-id-not-found" kind="resource-error" )"
            R"(kind="other" kind="fragment-timeout" budget="reassembly" )"
            R"(budget="fragment-timeout" budget="max-connections" budget="accept-error" )"
            R"(budget="ack-too-big" )");

  // Each handle is the series of its family: an increment shows in the arena.
  ++st.conns_total;
  st.max_conn_reached += 2;
  EXPECT_EQ(st.get(Stats::Id::conns_total), 1u);
  EXPECT_EQ(st.get(Stats::Id::max_conn_reached), 2u);
  uint64_t budget = 0;
  arena->visit([&](const metrics::SeriesView& s) {
    if (s.family == "spoad_budget_refusals_total" && s.labels.ends_with(R"("max-connections")"))
      budget = s.value;
  });
  EXPECT_EQ(budget, 2u);
  EXPECT_EQ(Stats::key(Stats::Id::conns_total), "cum_conns");
  EXPECT_EQ(Stats::key(Stats::Id::hellos), "");
  EXPECT_EQ(Stats::key(Stats::Id::ack_too_big), "ack_too_big");
}

TEST(RuntimeStats, ShowStatColumns) {
  const spoad::testing::TempDir dir;
  const std::string sock = dir.path() + "/e.sock";
  const config::Config cfg = config::parse_config(
      "agents:\n  - name: e\n    type: echo\n    listen: unix:" + sock + "\n", "t.yaml");
  spoad::testing::TestLoop loop;
  Worker worker(loop.get(), cfg.agents);
  worker.start();
  cli::WorkerCli wc(worker, cli::WorkerIdentity{7, 1, 1, "test", 0});
  const std::string text = wc.execute({"show", "stat"});
  EXPECT_EQ(text.substr(0, text.find('\n') + 1),
            "# agent,type,pid,relative_pid,applets,idles,cum_conns,healthchecks,nb_waiting,"
            "nb_processed,cum_notify,cum_messages,fragmented,aborted,ack_too_big,nb_error,"
            "disconnects_received,handed_off,adopted,reassembly_bytes,reassembly_bytes_max,"
            "reassembly_limit,reassembly_refused,fragment_timeouts,max_connections,"
            "max_conn_reached,accept_errors,disconnect_normal,disconnect_io,disconnect_timeout,"
            "disconnect_too_big,disconnect_invalid,disconnect_no_version,"
            "disconnect_no_frame_size,disconnect_no_capabilities,disconnect_bad_version,"
            "disconnect_bad_frame_size,disconnect_frag_not_supported,disconnect_interlaced,"
            "disconnect_frame_id_not_found,disconnect_resource,disconnect_other,"
            "proc_time_avg_us,proc_time_max_us,bytes_in,bytes_out\n");
  bool done = false;
  worker.hard_stop([&done] { done = true; });
  EXPECT_TRUE(spoad::testing::run_until(loop.get(), [&] { return done; }));
  EXPECT_TRUE(loop.drain());
}

}  // namespace
}  // namespace spoad::runtime
