// Unit tests of the CLI grammar and layouts (lib/cli), against HAProxy's master CLI
// (management.txt 9.4, and the output of a real HAProxy 2.6 master CLI).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/format.h"
#include "cli/master_cli.h"

namespace spoad::cli {
namespace {

TEST(Split, CommandsWordsAndEscapes) {
  auto c = split_commands("@1 show info; show version");
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0], (Words{"@1", "show", "info"}));
  EXPECT_EQ(c[1], (Words{"show", "version"}));
  c = split_commands("  show\t proc  ");
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0], (Words{"show", "proc"}));
  c = split_commands("set x a\\;b\\ c;;");
  ASSERT_EQ(c.size(), 3u);
  EXPECT_EQ(c[0], (Words{"set", "x", "a;b c"}));
  EXPECT_TRUE(c[1].empty());
  EXPECT_TRUE(c[2].empty());
  c = split_commands("");
  ASSERT_EQ(c.size(), 1u);
  EXPECT_TRUE(c[0].empty());
  c = split_commands("show proc\r");  // CRLF from a telnet-like client
  EXPECT_EQ(c[0], (Words{"show", "proc"}));
}

TEST(Route, Prefixes) {
  EXPECT_EQ(parse_route("show").kind, Route::Kind::kNone);
  EXPECT_EQ(parse_route("@").kind, Route::Kind::kMaster);
  EXPECT_EQ(parse_route("@0").kind, Route::Kind::kMaster);
  EXPECT_EQ(parse_route("@master").kind, Route::Kind::kMaster);
  Route r = parse_route("@3");
  EXPECT_EQ(r.kind, Route::Kind::kRelative);
  EXPECT_EQ(r.number, 3u);
  r = parse_route("@!12345");
  EXPECT_EQ(r.kind, Route::Kind::kPid);
  EXPECT_EQ(r.number, 12345u);
  // Words that are not all digits are agent names (the pool of that agent).
  for (const char* name : {"iprep", "x", "1a", "-1", "a.b_c-D", "Master", "0x10"}) {
    r = parse_route(std::string("@") + name);
    EXPECT_EQ(r.kind, Route::Kind::kAgent) << name;
    EXPECT_EQ(r.name, name);
  }
  EXPECT_EQ(parse_route("@" + std::string(64, 'a')).kind, Route::Kind::kAgent);
  for (const std::string& bad :
       std::vector<std::string>{"@!", "@!x1", "@!0", "@00", "@99999999999999999999999", "@a/b",
                                "@a b", "@\x1b[2J", "@\xff", "@!iprep", "@" + std::string(65, 'a')})
    EXPECT_EQ(parse_route(bad).kind, Route::Kind::kInvalid) << bad;
}

TEST(PoolAnswer, SameAnswerOnceThenTheCount) {
  using Status = WorkerAnswer::Status;
  const std::vector<PoolMember> m = {{10, 1}, {11, 2}};
  EXPECT_EQ(pool_answer("iprep", m, {{Status::kOk, "added\n"}, {Status::kOk, "added\n"}}),
            "added\n# iprep: applied on 2 of 2 workers\n");
  // The same failure everywhere: once, and counted as failed.
  EXPECT_EQ(
      pool_answer("iprep", m,
                  {{Status::kFailed, "No such list.\n"}, {Status::kFailed, "No such list.\n"}}),
      "No such list.\n# iprep: applied on 0 of 2 workers, failed on 2\n");
  // An answer without its newline gets one; an empty answer stays empty.
  EXPECT_EQ(pool_answer("a", {{5, 1}}, {{Status::kOk, "x"}}),
            "x\n# a: applied on 1 of 1 workers\n");
  EXPECT_EQ(pool_answer("a", {{5, 1}}, {{Status::kOk, ""}}), "# a: applied on 1 of 1 workers\n");
  EXPECT_EQ(pool_answer("a", {}, {}), "# a: applied on 0 of 0 workers\n");
}

TEST(PoolAnswer, DistinctAnswersAreGroupedWithTheirWorkers) {
  using Status = WorkerAnswer::Status;
  const std::vector<PoolMember> m = {{10, 1}, {11, 2}, {12, 3}, {13, 1}, {14, 2}};
  const std::string out =
      pool_answer("iprep", m,
                  {{Status::kOk, "done\n"},
                   {Status::kFailed, "done\n"},  // same text, not the same result
                   {Status::kOk, "done\n"},
                   {Status::kGone, ""},
                   {Status::kNoAnswer, ""}});
  EXPECT_EQ(out,
            "# workers 1,3 (pids 10,12):\ndone\n"
            "# workers 2 (pids 11):\ndone\n"
            "# workers 2 (pids 14):\nNo answer from the worker.\n"
            "# iprep: applied on 2 of 5 workers, failed on 2, 1 gone\n");
  // Gone workers give no answer: the others' common one is shown once.
  EXPECT_EQ(pool_answer("p", {{1, 1}, {2, 2}}, {{Status::kGone, ""}, {Status::kOk, "ok\n"}}),
            "ok\n# p: applied on 1 of 2 workers, 1 gone\n");
  // Bytes stay bytes.
  EXPECT_EQ(pool_answer("p", {{1, 1}, {2, 2}},
                        {{Status::kOk, std::string("\0\xff\n", 3)}, {Status::kOk, "\xfe\n"}}),
            "# workers 1 (pids 1):\n" + std::string("\0\xff\n", 3) +
                "# workers 2 (pids 2):\n\xfe\n# p: applied on 2 of 2 workers\n");
}

TEST(Usage, LayoutAndHelp) {
  EXPECT_EQ(usage_line("show proc", "show processes status"),
            "show proc                               : show processes status");
  const std::string help = help_message(MasterCli::commands());
  EXPECT_EQ(help.rfind("The following commands are valid at this level:\n", 0), 0u);
  // Sorted by usage, as HAProxy sorts them ('!' < '<' < 'm' among the @ commands).
  const size_t a = help.find("  @!<pid>"), b = help.find("  @<relative pid>"),
               c = help.find("  @master"), d = help.find("  reload"), e = help.find("  show proc"),
               f = help.find("  @<agent name>");
  EXPECT_TRUE(a < f && f < b && b < c && c < d && d < e) << help;
  const std::string tail =
      "  help [<command>]                        : list matching or all commands\n"
      "  prompt                                  : toggle interactive mode with prompt\n"
      "  quit                                    : disconnect\n";
  EXPECT_EQ(help.substr(help.size() - tail.size()), tail);
}

TEST(Usage, UnknownCommands) {
  const auto& cmds = MasterCli::commands();
  std::string m = unknown_command_message(cmds, {});
  EXPECT_EQ(m.rfind("Unknown command. Please enter one of the following commands only:\n", 0), 0u);
  EXPECT_NE(m.find("show proc"), std::string::npos);

  m = unknown_command_message(cmds, {"show", "prox"});
  EXPECT_EQ(m.rfind("Unknown command, but maybe one of the following ones is a better match:\n", 0),
            0u);
  EXPECT_NE(m.find("  show proc"), std::string::npos) << m;
  EXPECT_EQ(m.find("  reload"), std::string::npos) << m;  // "show" matched: only show commands

  m = unknown_command_message(cmds, {"relaod"});
  EXPECT_NE(m.find("  reload"), std::string::npos) << m;

  m = unknown_command_message(cmds, {"bogus", "cmd"});
  EXPECT_EQ(m.rfind("Unknown command, but maybe one of the following ones is a better match:\n", 0),
            0u);
  EXPECT_NE(m.find("  quit "), std::string::npos);  // the help/prompt/quit lines end it
  // At most 5 suggestions, then the 3 fixed lines.
  EXPECT_LE(std::count(m.begin(), m.end(), '\n'), 1 + 5 + 3);
}

TEST(Format, Uptimes) {
  EXPECT_EQ(proc_uptime(127), "0d00h02m07s");
  EXPECT_EQ(proc_uptime(90061), "1d01h01m01s");
  EXPECT_EQ(info_uptime(5), "0d 0h00m05s");
  EXPECT_EQ(info_uptime(90061), "1d 1h01m01s");
}

TEST(Format, ShowProcIsHaproxysFixedWidthLayout) {
  ProcRow master{1162, "master", 0, 5, 127, "0.1.0"};
  std::vector<ProcRow> workers = {{1271, "iprep", 1, 0, 0, "0.1.0"},
                                  {1272, "mirror", 2, 0, 0, "0.1.0"}};
  std::vector<ProcRow> old = {{1233, "iprep", 1, 3, 43, "0.0.9"}};
  const std::string out = show_proc(master, 1, workers, old);
  const std::string expected =
      "#<PID>          <type>          <relative PID>  <reloads>       <uptime>        <version>   "
      "   \n"
      "1162            master          0               5 [failed: 1]   0d00h02m07s     0.1.0       "
      "   \n"
      "# workers\n"
      "1271            iprep           1               0               0d00h00m00s     0.1.0       "
      "   \n"
      "1272            mirror          2               0               0d00h00m00s     0.1.0       "
      "   \n"
      "# old workers\n"
      "1233            iprep           1               3               0d00h00m43s     0.0.9       "
      "   \n";
  EXPECT_EQ(out, expected);
  EXPECT_EQ(show_proc(master, 0, workers, {}).find("# old workers"), std::string::npos);
}

TEST(Format, InfoTextJsonAndStatCsv) {
  Fields f = {{"Name", "spoad"}, {"Pid", 42}, {"Uptime_sec", uint64_t{7}}};
  EXPECT_EQ(info_text(f), "Name: spoad\nPid: 42\nUptime_sec: 7\n");
  auto j = nlohmann::json::parse(info_json(f, 3));
  ASSERT_TRUE(j.is_array());
  EXPECT_EQ(j[0]["field"]["name"], "Name");
  EXPECT_EQ(j[0]["value"]["value"], "spoad");
  EXPECT_EQ(j[0]["processNum"], 3);
  EXPECT_EQ(j[2]["value"]["type"], "u64");
  EXPECT_EQ(j[2]["field"]["pos"], 2);
  std::vector<Fields> rows = {{{"agent", "a,b"}, {"n", 1}}, {{"agent", "c"}, {"n", 2}}};
  EXPECT_EQ(stat_csv(rows), "# agent,n\na b,1\nc,2\n");
}

}  // namespace
}  // namespace spoad::cli
