// util::UvHandles on a real libuv loop: callbacks while the owner lives, the owner destroyed
// before libuv's close callbacks, after_close hooks, an owner destroyed by its own hook.
#include "util/uv_handle.h"

#include <gtest/gtest.h>
#include <uv.h>

#include <memory>
#include <string>
#include <vector>

namespace {

struct Owner {
  struct Extra {
    int id = 0;
  };
  using Set = spoad::util::UvHandles<Owner, Extra>;

  explicit Owner(uv_loop_t* loop, std::vector<std::string>* log = nullptr) : loop(loop), log(log) {}

  Set::Box* timer(int id, uint64_t ms) {
    Set::Box* b = handles.make();
    b->extra.id = id;
    EXPECT_EQ(uv_timer_init(loop, &b->u.timer), 0);
    uv_timer_start(&b->u.timer, &Owner::on_timer, ms, 0);
    return b;
  }
  static void on_timer(uv_timer_t* t) {
    auto* b = Set::Box::from(t);
    if (!b->live()) return;
    b->owner()->fired.push_back(b->extra.id);
  }
  void on_closed(Set::Box* b) {
    if (log) log->push_back("closed " + std::to_string(b->extra.id));
    if (b == watched) watched = nullptr;
    if (self_destruct && handles.empty()) self_destruct->reset();  // destroys this
  }

  uv_loop_t* loop;
  std::vector<std::string>* log;
  std::vector<int> fired;
  Set::Box* watched = nullptr;
  std::unique_ptr<Owner>* self_destruct = nullptr;
  Set handles{this, &Owner::on_closed};
};

class UvHandlesTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(uv_loop_init(&loop_), 0); }
  void TearDown() override {
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0);  // every handle was closed
  }
  uv_loop_t loop_;
};

TEST_F(UvHandlesTest, CallbacksSeeTheOwnerThenCloseFreesAndTells) {
  std::vector<std::string> log;
  Owner o(&loop_, &log);
  o.timer(1, 0);
  o.watched = o.timer(2, 0);
  EXPECT_EQ(o.handles.size(), 2u);
  uv_run(&loop_, UV_RUN_DEFAULT);  // timers fire once; open handles keep nothing running
  EXPECT_EQ(o.fired.size(), 2u);
  o.handles.close(o.watched);
  EXPECT_TRUE(o.watched->closing());
  EXPECT_FALSE(o.watched->live());
  EXPECT_EQ(o.handles.size(), 2u);  // counted until libuv's close callback ran
  uv_run(&loop_, UV_RUN_DEFAULT);
  EXPECT_EQ(o.watched, nullptr);
  EXPECT_EQ(log, std::vector<std::string>{"closed 2"});
  EXPECT_EQ(o.handles.size(), 1u);
  o.handles.close_all();
  uv_run(&loop_, UV_RUN_DEFAULT);
  EXPECT_TRUE(o.handles.empty());
  EXPECT_EQ(log, (std::vector<std::string>{"closed 2", "closed 1"}));
}

TEST_F(UvHandlesTest, OwnerDestroyedFirstClosesOpenBoxesAndForgetsItself) {
  int after = 0;
  {
    auto o = std::make_unique<Owner>(&loop_);
    o->timer(1, 0);
    Owner::Set::Box* closing = o->timer(2, 0);
    o->handles.close(closing, [&after] { ++after; });
    o.reset();  // one box open, one closing: neither callback may reach the owner
  }
  uv_run(&loop_, UV_RUN_DEFAULT);  // ASan/valgrind: no use after free, no leak
  EXPECT_EQ(after, 1);             // after_close runs without the owner
}

TEST_F(UvHandlesTest, AfterCloseOnAClosingBoxRunsInOrder) {
  Owner o(&loop_);
  Owner::Set::Box* b = o.timer(1, 1000);
  std::vector<int> order;
  o.handles.close(b, [&order] { order.push_back(1); });
  o.handles.close(b);  // no-op
  o.handles.close(b, [&order] { order.push_back(2); });
  EXPECT_TRUE(order.empty());
  uv_run(&loop_, UV_RUN_DEFAULT);
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
  EXPECT_TRUE(o.fired.empty());  // closed before it was due
  EXPECT_TRUE(o.handles.empty());
}

TEST_F(UvHandlesTest, DiscardFreesABoxNeverInitialised) {
  Owner o(&loop_);
  Owner::Set::Box* b = o.handles.make();
  EXPECT_EQ(o.handles.size(), 1u);
  o.handles.discard(b);
  EXPECT_TRUE(o.handles.empty());
}

TEST_F(UvHandlesTest, OnClosedMayDestroyTheOwner) {
  std::vector<std::string> log;
  auto o = std::make_unique<Owner>(&loop_, &log);
  o->self_destruct = &o;
  o->timer(1, 0);
  o->timer(2, 0);
  o->handles.close_all();
  uv_run(&loop_, UV_RUN_DEFAULT);
  EXPECT_EQ(o, nullptr);
  EXPECT_EQ(log.size(), 2u);
}

}  // namespace
