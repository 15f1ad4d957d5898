#include "k8s/workqueue.h"

#include <gtest/gtest.h>

#include <thread>

namespace pgshift::k8s {
namespace {

using std::chrono::milliseconds;

TEST(WorkQueueTest, DeduplicatesQueuedKeys) {
  WorkQueue q;
  q.Add("ns/a");
  q.Add("ns/b");
  q.Add("ns/a");
  EXPECT_EQ(q.Len(), 2u);
  EXPECT_EQ(*q.Get(), "ns/a");
  EXPECT_EQ(*q.Get(), "ns/b");
  EXPECT_FALSE(q.Get(milliseconds(10)).has_value());
}

TEST(WorkQueueTest, KeyAddedWhileProcessingIsRequeuedOnDone) {
  WorkQueue q;
  q.Add("k");
  std::string key = *q.Get();
  q.Add("k");  // changed again while a worker has it
  EXPECT_EQ(q.Len(), 0u);  // not handed to a second worker
  EXPECT_FALSE(q.Get(milliseconds(10)).has_value());
  q.Done(key);
  EXPECT_EQ(q.Len(), 1u);
  EXPECT_EQ(*q.Get(), "k");
  q.Done("k");
  EXPECT_EQ(q.Len(), 0u);
}

TEST(WorkQueueTest, AddAfterWaitsAndKeepsTheEarliest) {
  WorkQueue q;
  auto start = std::chrono::steady_clock::now();
  q.AddAfter("late", milliseconds(300));
  q.AddAfter("late", milliseconds(60));  // earlier wins
  q.AddAfter("late", milliseconds(500));
  EXPECT_EQ(q.Len(), 0u);
  auto key = q.Get(milliseconds(2000));
  auto waited = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(key.has_value());
  EXPECT_EQ(*key, "late");
  EXPECT_GE(waited, milliseconds(55));
  EXPECT_LT(waited, milliseconds(290));
  q.Done("late");
  EXPECT_FALSE(q.Get(milliseconds(50)).has_value());  // the other delays were merged
}

TEST(WorkQueueTest, RateLimitedRequeueBacksOffPerKeyUntilForgotten) {
  WorkQueue q(milliseconds(20), milliseconds(1000));
  q.AddRateLimited("k");
  EXPECT_EQ(q.NumRequeues("k"), 1);
  ASSERT_TRUE(q.Get(milliseconds(500)).has_value());
  q.Done("k");
  auto start = std::chrono::steady_clock::now();
  q.AddRateLimited("k");  // second failure: 40 ms
  ASSERT_TRUE(q.Get(milliseconds(500)).has_value());
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(35));
  q.Done("k");
  EXPECT_EQ(q.NumRequeues("k"), 2);
  q.Forget("k");
  EXPECT_EQ(q.NumRequeues("k"), 0);
}

TEST(WorkQueueTest, ShutDownWakesBlockedWorkers) {
  WorkQueue q;
  std::optional<std::string> got = "unset";
  std::thread worker([&] { got = q.Get(); });
  std::this_thread::sleep_for(milliseconds(30));
  q.ShutDown();
  worker.join();
  EXPECT_FALSE(got.has_value());
  q.Add("ignored");
  EXPECT_EQ(q.Len(), 0u);
  EXPECT_TRUE(q.shutting_down());
}

TEST(WorkQueueTest, ManyWorkersProcessEachKeyOnceAtATime) {
  WorkQueue q;
  std::atomic<int> in_flight_a{0};
  std::atomic<int> max_in_flight_a{0};
  std::atomic<int> processed{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&] {
      while (auto key = q.Get()) {
        if (*key == "a") {
          int n = ++in_flight_a;
          max_in_flight_a = std::max(max_in_flight_a.load(), n);
          std::this_thread::sleep_for(milliseconds(2));
          --in_flight_a;
        }
        ++processed;
        q.Done(*key);
      }
    });
  }
  for (int i = 0; i < 200; ++i) {
    q.Add("a");
    q.Add("k" + std::to_string(i % 10));
    if (i % 20 == 0) std::this_thread::sleep_for(milliseconds(1));
  }
  std::this_thread::sleep_for(milliseconds(100));
  q.ShutDown();
  for (auto& t : workers) t.join();
  EXPECT_EQ(max_in_flight_a.load(), 1);
  EXPECT_GT(processed.load(), 10);
}

}  // namespace
}  // namespace pgshift::k8s
