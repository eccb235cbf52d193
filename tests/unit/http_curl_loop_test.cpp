// Tests of http::CurlLoop (lib/http) against a real HTTP server on 127.0.0.1: concurrent
// transfers, failures reported asynchronously, timeouts, cancel_all, close and destruction
// with transfers in flight. Each test's loop must end with every handle closed. Nothing here
// bounds a duration from above: each step waits for its event (run_until), whose deadline only
// guards against a hang.
#include "http/curl_loop.h"

#include <curl/curl.h>
#include <gtest/gtest.h>
#include <uv.h>

#include <memory>
#include <string>
#include <vector>

#include "tests/support/test_http_server.h"
#include "tests/support/test_loop.h"

namespace spoad::http {
namespace {

using spoad::testing::kGuardMs;
using spoad::testing::run_until;
using spoad::testing::TestHttpServer;
using spoad::testing::TestLoop;

size_t append_body(char* data, size_t size, size_t n, void* userp) {
  static_cast<std::string*>(userp)->append(data, size * n);
  return size * n;
}

// One transfer and what came back.
struct Xfer {
  CURL* easy = nullptr;
  std::string body;
  bool done = false;
  CURLcode result = CURLE_OK;
  long status = -1;

  // timeout_ms: curl's own limit; by default a guard (kGuardMs), not part of the test.
  explicit Xfer(const std::string& url, long timeout_ms = static_cast<long>(kGuardMs)) {
    easy = curl_easy_init();
    curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &append_body);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, &body);
  }
  ~Xfer() { curl_easy_cleanup(easy); }
  CurlLoop::Done callback() {
    return [this](CURLcode r, long s) {
      EXPECT_FALSE(done) << "done called twice";
      done = true;
      result = r;
      status = s;
    };
  }
};

TestHttpServer::Response echo_target(const TestHttpServer::Request& r) {
  TestHttpServer::Response resp;
  resp.body = "you asked for " + r.target;
  return resp;
}

TEST(CurlLoop, ManyConcurrentTransfers) {
  TestHttpServer server;
  server.set_handler(echo_target);
  TestLoop loop;
  auto cl = std::make_unique<CurlLoop>(loop.get());
  constexpr int kN = 60;
  std::vector<std::unique_ptr<Xfer>> xs;
  for (int i = 0; i < kN; ++i) {
    xs.push_back(std::make_unique<Xfer>(server.url("/item/" + std::to_string(i))));
    cl->add(xs.back()->easy, xs.back()->callback());
    EXPECT_FALSE(xs.back()->done) << "done ran inside add()";
  }
  EXPECT_EQ(cl->active(), static_cast<size_t>(kN));
  ASSERT_TRUE(run_until(loop.get(), [&] { return cl->active() == 0; }));
  for (int i = 0; i < kN; ++i) {
    EXPECT_TRUE(xs[i]->done);
    EXPECT_EQ(xs[i]->result, CURLE_OK) << curl_easy_strerror(xs[i]->result);
    EXPECT_EQ(xs[i]->status, 200);
    EXPECT_EQ(xs[i]->body, "you asked for /item/" + std::to_string(i));
  }
  EXPECT_EQ(server.request_count(), static_cast<size_t>(kN));
  // A second round reuses the cached connections.
  const size_t conns = server.accepted();
  for (int i = 0; i < 10; ++i) {
    xs[i] = std::make_unique<Xfer>(server.url("/again"));
    cl->add(xs[i]->easy, xs[i]->callback());
  }
  ASSERT_TRUE(run_until(loop.get(), [&] { return cl->active() == 0; }));
  for (int i = 0; i < 10; ++i)
    EXPECT_EQ(xs[i]->status, 200);
  EXPECT_EQ(server.accepted(), conns);
  bool closed = false;
  cl->close([&] { closed = true; });
  EXPECT_FALSE(closed);
  ASSERT_TRUE(run_until(loop.get(), [&] { return closed; }));
}

TEST(CurlLoop, PostBody) {
  TestHttpServer server;
  server.set_handler([](const TestHttpServer::Request& r) {
    TestHttpServer::Response resp;
    resp.status = 201;
    resp.body = r.method + " " + std::to_string(r.body.size());
    return resp;
  });
  TestLoop loop;
  CurlLoop cl(loop.get());
  const std::string payload(300'000, 'x');  // several socket writes
  Xfer x(server.url("/post"));
  curl_easy_setopt(x.easy, CURLOPT_POSTFIELDS, payload.data());
  curl_easy_setopt(x.easy, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(payload.size()));
  cl.add(x.easy, x.callback());
  ASSERT_TRUE(run_until(loop.get(), [&] { return x.done; }));
  EXPECT_EQ(x.result, CURLE_OK);
  EXPECT_EQ(x.status, 201);
  EXPECT_EQ(x.body, "POST 300000");
  ASSERT_EQ(server.request_count(), 1u);
  EXPECT_EQ(server.requests()[0].body, payload);
  bool closed = false;
  cl.close([&] { closed = true; });
  ASSERT_TRUE(run_until(loop.get(), [&] { return closed; }));
}

TEST(CurlLoop, FailuresAreReportedOnTheLoop) {
  TestLoop loop;
  CurlLoop cl(loop.get());
  // Not a valid handle: reported on the next iteration, not inside add().
  bool bad_done = false;
  CURLcode bad_rc = CURLE_OK;
  cl.add(nullptr, [&](CURLcode rc, long) {
    bad_done = true;
    bad_rc = rc;
  });
  EXPECT_FALSE(bad_done);
  EXPECT_EQ(cl.active(), 1u);
  // Connection refused: a port nobody listens on (a server that went down).
  uint16_t port = 0;
  {
    TestHttpServer s;
    port = s.port();
  }
  Xfer refused("http://127.0.0.1:" + std::to_string(port) + "/");
  cl.add(refused.easy, refused.callback());
  ASSERT_TRUE(run_until(loop.get(), [&] { return bad_done && refused.done; }));
  EXPECT_EQ(bad_rc, CURLE_BAD_FUNCTION_ARGUMENT);
  EXPECT_EQ(refused.result, CURLE_COULDNT_CONNECT) << curl_easy_strerror(refused.result);
  EXPECT_EQ(refused.status, 0);
  EXPECT_EQ(cl.active(), 0u);
  bool closed = false;
  cl.close([&] { closed = true; });
  ASSERT_TRUE(run_until(loop.get(), [&] { return closed; }));
}

TEST(CurlLoop, TimeoutUsesTheTimer) {
  TestHttpServer server;
  server.set_handler([](const TestHttpServer::Request&) {
    TestHttpServer::Response r;
    r.hold = true;
    return r;
  });
  TestLoop loop;
  CurlLoop cl(loop.get());
  // The server never answers: only curl's timeout, driven by the CurlLoop's timer (nothing
  // else happens on the sockets), ends the transfer; run_until's deadline is just a guard.
  Xfer x(server.url("/slow"), 150);
  const uint64_t t0 = uv_hrtime();
  cl.add(x.easy, x.callback());
  ASSERT_TRUE(run_until(loop.get(), [&] { return x.done; }));
  const uint64_t ms = (uv_hrtime() - t0) / 1'000'000;
  EXPECT_EQ(x.result, CURLE_OPERATION_TIMEDOUT);
  EXPECT_GE(ms, 140u);  // not before its time (a lower bound: load only makes it later)
  bool closed = false;
  cl.close([&] { closed = true; });
  ASSERT_TRUE(run_until(loop.get(), [&] { return closed; }));
}

TEST(CurlLoop, CancelAll) {
  TestHttpServer server;
  bool hold = true;  // guarded by the server's lock (the handler runs under it)
  server.set_handler([&](const TestHttpServer::Request& r) {
    TestHttpServer::Response resp;
    resp.hold = hold;
    resp.body = r.target;
    return resp;
  });
  TestLoop loop;
  CurlLoop cl(loop.get());
  std::vector<std::unique_ptr<Xfer>> xs;
  std::vector<int> order;
  for (int i = 0; i < 5; ++i) {
    xs.push_back(std::make_unique<Xfer>(server.url("/held")));
    cl.add(xs[i]->easy, [&, i](CURLcode rc, long status) {
      order.push_back(i);
      xs[i]->done = true;
      xs[i]->result = rc;
      xs[i]->status = status;
    });
  }
  ASSERT_TRUE(run_until(loop.get(), [&] { return server.request_count() == 5; }));
  EXPECT_EQ(cl.active(), 5u);
  cl.cancel_all();
  EXPECT_EQ(cl.active(), 0u);
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));  // at once, in the order added
  for (auto& x : xs)
    EXPECT_EQ(x->result, CURLE_ABORTED_BY_CALLBACK);
  // The CurlLoop still works.
  server.set_handler([](const TestHttpServer::Request&) { return TestHttpServer::Response{}; });
  Xfer after(server.url("/after"));
  cl.add(after.easy, after.callback());
  ASSERT_TRUE(run_until(loop.get(), [&] { return after.done; }));
  EXPECT_EQ(after.status, 200);
  bool closed = false;
  cl.close([&] { closed = true; });
  ASSERT_TRUE(run_until(loop.get(), [&] { return closed; }));
}

TEST(CurlLoop, CloseThenDestroyWithTransfersInFlight) {
  TestHttpServer server;
  server.set_handler([](const TestHttpServer::Request&) {
    TestHttpServer::Response r;
    r.hold = true;
    return r;
  });
  TestLoop loop;
  auto cl = std::make_unique<CurlLoop>(loop.get());
  int aborted = 0;
  std::vector<CURL*> easies;
  for (int i = 0; i < 8; ++i) {
    CURL* e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_URL, server.url("/x").c_str());
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    easies.push_back(e);
    // The owner frees the handle in `done`.
    cl->add(e, [&, e](CURLcode rc, long) {
      if (rc == CURLE_ABORTED_BY_CALLBACK) ++aborted;
      curl_easy_cleanup(e);
    });
  }
  ASSERT_TRUE(run_until(loop.get(), [&] { return server.request_count() == 8; }));
  bool closed = false;
  cl->close([&] { closed = true; });
  EXPECT_EQ(aborted, 8);
  // A transfer added after close() is refused at once.
  bool refused = false;
  cl->add(nullptr, [&](CURLcode rc, long) { refused = rc == CURLE_ABORTED_BY_CALLBACK; });
  EXPECT_TRUE(refused);
  cl.reset();  // before libuv closed the handles
  EXPECT_FALSE(closed);
  ASSERT_TRUE(run_until(loop.get(), [&] { return closed; }));
}

TEST(CurlLoop, DestroyWithoutClose) {
  TestHttpServer server;
  server.set_handler([](const TestHttpServer::Request&) {
    TestHttpServer::Response r;
    r.hold = true;
    return r;
  });
  TestLoop loop;
  auto cl = std::make_unique<CurlLoop>(loop.get());
  std::vector<std::unique_ptr<Xfer>> xs;
  for (int i = 0; i < 4; ++i) {
    xs.push_back(std::make_unique<Xfer>(server.url("/x")));
    cl->add(xs[i]->easy, xs[i]->callback());
  }
  ASSERT_TRUE(run_until(loop.get(), [&] { return server.request_count() == 4; }));
  cl.reset();  // the callbacks are dropped; the handles close on the next loop run
  for (auto& x : xs)
    EXPECT_FALSE(x->done);
  xs.clear();  // the easy handles were removed from curl: freeing them is safe
  EXPECT_TRUE(loop.drain());
}

// A `done` may start the next transfer and close the CurlLoop.
TEST(CurlLoop, DoneMayAddAndClose) {
  TestHttpServer server;
  server.set_handler(echo_target);
  TestLoop loop;
  CurlLoop cl(loop.get());
  Xfer first(server.url("/1")), second(server.url("/2"));
  bool closed = false;
  cl.add(first.easy, [&](CURLcode, long status) {
    first.status = status;
    cl.add(second.easy, [&](CURLcode, long s2) {
      second.status = s2;
      cl.close([&] { closed = true; });
    });
  });
  ASSERT_TRUE(run_until(loop.get(), [&] { return closed; }));
  EXPECT_EQ(first.status, 200);
  EXPECT_EQ(second.status, 200);
  EXPECT_EQ(second.body, "you asked for /2");
}

}  // namespace
}  // namespace spoad::http
